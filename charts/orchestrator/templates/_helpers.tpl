{{/*
Expand the name of the chart.
*/}}
{{- define "orchestrator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name, truncated at 63 characters because
some Kubernetes name fields are limited to that (by the DNS naming spec). If
the release name contains the chart name it is used as the full name.
*/}}
{{- define "orchestrator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "orchestrator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "orchestrator.labels" -}}
helm.sh/chart: {{ include "orchestrator.chart" . }}
{{ include "orchestrator.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: optiinfra
{{- end }}

{{/*
Selector labels
*/}}
{{- define "orchestrator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orchestrator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "orchestrator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "orchestrator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository, then @digest if given, else :tag (default:
the chart's appVersion). A short commit SHA can be all digits (2817012), and
`--set image.tag=2817012` (which Skaffold's setValueTemplates uses) or an
unquoted YAML value turns it into a number; a float would print as
2.817012e+06, so numbers are printed as integers.
*/}}
{{- define "orchestrator.image" -}}
{{- $tag := .Values.image.tag }}
{{- if or (kindIs "float64" $tag) (kindIs "int64" $tag) (kindIs "int" $tag) }}
{{- $tag = printf "%d" (int64 $tag) }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion $tag) }}
{{- end }}
{{- end }}

{{/*
The shutdown budget, in seconds. With the native preStop sleep, the kubelet
sleeps first and SHUTDOWN_DELAY runs after SIGTERM; without it (clusters
older than 1.30), SHUTDOWN_DELAY absorbs the preStop seconds, so the time
the pod keeps serving after deletion is the same either way.
*/}}
{{- define "orchestrator.preStopSeconds" -}}
{{- if .Values.termination.nativeSleep }}{{ .Values.termination.preStopSleepSeconds | int }}{{ else }}0{{ end }}
{{- end }}

{{- define "orchestrator.shutdownDelaySeconds" -}}
{{- if .Values.termination.nativeSleep }}
{{- .Values.config.shutdownDelaySeconds | int }}
{{- else }}
{{- add .Values.config.shutdownDelaySeconds .Values.termination.preStopSleepSeconds }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: at least preStop + SHUTDOWN_DELAY +
SHUTDOWN_TIMEOUT + slack, computed when unset, checked when set. The kubelet
counts the grace period from the start of preStop and kills the container
when it runs out, which would cut off requests the drain was finishing.
*/}}
{{- define "orchestrator.terminationGracePeriodSeconds" -}}
{{- $pre := include "orchestrator.preStopSeconds" . | int }}
{{- $delay := include "orchestrator.shutdownDelaySeconds" . | int }}
{{- $timeout := .Values.config.shutdownTimeoutSeconds | int }}
{{- $slack := .Values.termination.slackSeconds | int }}
{{- $needed := add $pre $delay $timeout $slack }}
{{- $set := .Values.termination.gracePeriodSeconds }}
{{- if kindIs "invalid" $set }}
{{- $needed }}
{{- else if lt ($set | int) $needed }}
{{- fail (printf "termination.gracePeriodSeconds=%d is too short: the pod needs preStop sleep %ds + SHUTDOWN_DELAY %ds + SHUTDOWN_TIMEOUT %ds + slack %ds = %ds to drain without cutting requests off. Raise it, or leave it unset to have it computed." ($set | int) $pre $delay $timeout $slack $needed) }}
{{- else }}
{{- $set | int }}
{{- end }}
{{- end }}

{{/*
Whether a PodDisruptionBudget is rendered: when more than one pod runs
(replicaCount, or the HPA's minReplicas), or when forced.
*/}}
{{- define "orchestrator.pdbEnabled" -}}
{{- $pods := .Values.replicaCount | int }}
{{- if .Values.autoscaling.enabled }}{{ $pods = .Values.autoscaling.minReplicas | int }}{{ end }}
{{- if or .Values.podDisruptionBudget.force (gt $pods 1) }}true{{ end }}
{{- end }}
