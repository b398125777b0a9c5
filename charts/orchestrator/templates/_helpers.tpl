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
A memory quantity in bytes, rounded up as Kubernetes rounds it: a plain
number (134217728), a decimal (1.5Gi) with a binary (Ki to Ei) or decimal
(k to E) suffix, or an exponent (2e9). Fails on anything else (millibytes,
say) with the name of the value, which the caller passes as "what".
*/}}
{{- define "orchestrator.memoryBytes" -}}
{{- $q := .quantity }}
{{- if or (kindIs "float64" $q) (kindIs "int64" $q) (kindIs "int" $q) }}
{{- $q = printf "%d" (int64 $q) }}
{{- end }}
{{- $q = toString $q }}
{{- $suffix := regexFind "([eE][0-9]+|[KMGTPE]i|[kMGTPE])$" $q }}
{{- $number := trimSuffix $suffix $q }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?$" $number) }}
{{- fail (printf "%s=%s: the chart reads memory as a number of bytes with an optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E or e<n>), e.g. 128Mi or 1.5Gi" .what $q) }}
{{- end }}
{{- $units := dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 }}
{{- $unit := 1.0 }}
{{- if regexMatch "^[eE][0-9]" $suffix }}
{{- range until (trimPrefix "e" (lower $suffix) | int) }}{{ $unit = mulf $unit 10.0 }}{{ end }}
{{- else }}
{{- $unit = get $units $suffix }}
{{- end }}
{{- /* Whole digits over a power of ten, so 1.5Gi is 15 x 1Gi / 10: exact in float64 for any realistic limit. */}}
{{- $parts := splitList "." $number }}
{{- $fraction := "" }}
{{- if gt (len $parts) 1 }}{{ $fraction = index $parts 1 }}{{ end }}
{{- $scale := 1.0 }}
{{- range until (len $fraction) }}{{ $scale = mulf $scale 10.0 }}{{ end }}
{{- divf (mulf (float64 (printf "%s%s" (index $parts 0) $fraction)) $unit) $scale | ceil | int64 }}
{{- end }}

{{/*
GOMEMLIMIT: 90% of limits.memory (the limit less a tenth of it, rounded
down), in bytes; empty without a memory limit.
The Go runtime collects harder as its memory nears the limit; the 10% left
is for what it does not count (memory outside the Go heap and runtime, the
kernel's page cache charged to the container), so the collector works
before the kernel's OOM killer does.
*/}}
{{- define "orchestrator.goMemLimit" -}}
{{- with dig "limits" "memory" "" .Values.resources }}
{{- $bytes := include "orchestrator.memoryBytes" (dict "quantity" . "what" "resources.limits.memory") | int64 }}
{{- sub $bytes (div $bytes 10) }}
{{- end }}
{{- end }}

{{/*
Whether a PodDisruptionBudget is rendered: when more than one pod runs
(the replicas, or the HPA's minReplicas), or when forced.
*/}}
{{- define "orchestrator.pdbEnabled" -}}
{{- $pods := include "orchestrator.replicas" . | int }}
{{- if .Values.autoscaling.enabled }}{{ $pods = .Values.autoscaling.minReplicas | int }}{{ end }}
{{- if or .Values.podDisruptionBudget.force (gt $pods 1) }}true{{ end }}
{{- end }}

{{/*
Where the agents and tasks live: "memory" (no database: each pod's memory),
"bundled" (postgresql.enabled: the chart's own PostgreSQL) or "external"
(database.existingSecret: a URL in a Secret the user made). Both at once
fail: which database would the pods use?
*/}}
{{- define "orchestrator.databaseMode" -}}
{{- if and .Values.postgresql.enabled .Values.database.existingSecret }}
{{- fail (printf "postgresql.enabled=true and database.existingSecret=%s both give the orchestrator a database: choose one (the bundled PostgreSQL for development and tests, or your own through database.existingSecret)" .Values.database.existingSecret) }}
{{- else if .Values.postgresql.enabled }}bundled
{{- else if .Values.database.existingSecret }}external
{{- else }}memory
{{- end }}
{{- end }}

{{/*
The Deployment's replicas: replicaCount, or when it is null 1 in memory
mode and 2 with a database.
*/}}
{{- define "orchestrator.replicas" -}}
{{- if not (kindIs "invalid" .Values.replicaCount) }}
{{- .Values.replicaCount | int }}
{{- else if eq (include "orchestrator.databaseMode" .) "memory" }}1
{{- else }}2
{{- end }}
{{- end }}

{{/*
Checks of the database settings against the rest. In memory mode every pod
keeps its own agents and tasks: two pods would split them (an agent
registered on one gets 404 for the heartbeats the Service sends to the
other), so more than one pod, or an HPA, fails the render.
*/}}
{{- define "orchestrator.validateDatabase" -}}
{{- $mode := include "orchestrator.databaseMode" . }}
{{- $useDatabase := "give the pods a shared database: postgresql.enabled=true (bundled, for development and tests) or database.existingSecret (your PostgreSQL, for production)" }}
{{- if eq $mode "memory" }}
{{- if .Values.autoscaling.enabled }}
{{- fail (printf "autoscaling.enabled=true without a database: each pod would keep its own agents and tasks in memory, so state would be split across pods (an agent registered on one pod gets 404 for heartbeats that reach another). Turn autoscaling off, or %s" $useDatabase) }}
{{- end }}
{{- $replicas := include "orchestrator.replicas" . | int }}
{{- if gt $replicas 1 }}
{{- fail (printf "replicaCount=%d without a database: each pod would keep its own agents and tasks in memory, so state would be split across pods (an agent registered on one pod gets 404 for heartbeats that reach another). Run one pod, or %s" $replicas $useDatabase) }}
{{- end }}
{{- else if and .Values.autoscaling.enabled (lt (.Values.autoscaling.minReplicas | int) 2) }}
{{- fail (printf "autoscaling.minReplicas=%d: with a database the HPA keeps at least 2 pods, so the PodDisruptionBudget (minAvailable 1) lets a node drain move one while the other serves" (.Values.autoscaling.minReplicas | int)) }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if has .name (list "DATABASE_URL" "DATABASE_URL_FILE") }}
{{- fail (printf "extraEnv sets %s: the database URL holds a password, which must not sit in the pod spec, and the chart must know it runs with a database (replicas, disruption budget); use database.existingSecret (a Secret with the URL, mounted as a file) or postgresql.enabled" .name) }}
{{- end }}
{{- end }}
{{- if and (ne $mode "external") .Values.database.egress.cidrs }}
{{- fail "database.egress.cidrs is set but database.existingSecret is not: the rule is for an external database (the bundled one is allowed by pod selector)" }}
{{- end }}
{{- end }}

{{/* The Secret and key holding the database URL; empty in memory mode. */}}
{{- define "orchestrator.databaseSecretName" -}}
{{- $mode := include "orchestrator.databaseMode" . }}
{{- if eq $mode "bundled" }}{{ include "orchestrator.postgresql.fullname" . }}
{{- else if eq $mode "external" }}{{ .Values.database.existingSecret }}
{{- end }}
{{- end }}

{{- define "orchestrator.databaseSecretKey" -}}
{{- $mode := include "orchestrator.databaseMode" . }}
{{- if eq $mode "bundled" }}url
{{- else if eq $mode "external" }}{{ .Values.database.existingSecretKey }}
{{- end }}
{{- end }}

{{/* Where the database URL file is mounted in the container. */}}
{{- define "orchestrator.databaseDir" -}}/etc/orchestrator/database{{- end }}

{{/*
The checksum that rolls the pods when the database they use changes (the
URL is read at startup): the bundled database's name, user and database
(not its password, which the chart keeps across upgrades), or the content of
database.existingSecret when helm can read it, as for the tokens.
*/}}
{{- define "orchestrator.databaseChecksum" -}}
{{- $mode := include "orchestrator.databaseMode" . }}
{{- if eq $mode "bundled" }}
{{- list (include "orchestrator.postgresql.fullname" .) .Values.postgresql.auth | toJson | sha256sum }}
{{- else }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.database.existingSecret }}
{{- list .Values.database.existingSecret .Values.database.existingSecretKey (dig "data" dict ($secret | default dict)) | toJson | sha256sum }}
{{- end }}
{{- end }}

{{/*
The topology spread constraints: topologySpreadConstraints, or when it is
null, with a database, a preference for spreading the pods over nodes and
zones (ScheduleAnyway: a single node still runs them all). The pods' own
labels are filled in where an entry has no labelSelector.
*/}}
{{- define "orchestrator.topologySpreadConstraints" -}}
{{- $constraints := .Values.topologySpreadConstraints }}
{{- if kindIs "invalid" $constraints }}
{{- $constraints = list }}
{{- if ne (include "orchestrator.databaseMode" .) "memory" }}
{{- $constraints = list
  (dict "maxSkew" 1 "topologyKey" "kubernetes.io/hostname" "whenUnsatisfiable" "ScheduleAnyway")
  (dict "maxSkew" 1 "topologyKey" "topology.kubernetes.io/zone" "whenUnsatisfiable" "ScheduleAnyway") }}
{{- end }}
{{- end }}
{{- $filled := list }}
{{- range $constraints }}
{{- $constraint := deepCopy . }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" (include "orchestrator.selectorLabels" $ | fromYaml)) }}
{{- end }}
{{- $filled = append $filled $constraint }}
{{- end }}
{{- with $filled }}{{ toYaml . }}{{ end }}
{{- end }}

{{/*
The bundled PostgreSQL's name: <fullname>-postgresql, at most 52
characters (a StatefulSet's pods carry a controller-revision-hash label of
its name plus 11 characters, and labels stop at 63).
*/}}
{{- define "orchestrator.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "orchestrator.fullname" . | trunc 41 | trimSuffix "-") }}
{{- end }}

{{/*
The bundled PostgreSQL's selector labels: its own app.kubernetes.io/name,
so that nothing selecting the orchestrator's pods (name and instance)
selects the database's, and the other way round.
*/}}
{{- define "orchestrator.postgresql.selectorLabels" -}}
app.kubernetes.io/name: postgresql
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: database
{{- end }}

{{- define "orchestrator.postgresql.labels" -}}
helm.sh/chart: {{ include "orchestrator.chart" . }}
{{ include "orchestrator.postgresql.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: optiinfra
{{- end }}

{{/* The bundled PostgreSQL's image: repository:tag (a number printed as such). */}}
{{- define "orchestrator.postgresql.image" -}}
{{- $tag := .Values.postgresql.image.tag }}
{{- if or (kindIs "float64" $tag) (kindIs "int64" $tag) (kindIs "int" $tag) }}
{{- $tag = printf "%d" (int64 $tag) }}
{{- end }}
{{- printf "%s:%s" .Values.postgresql.image.repository $tag }}
{{- end }}

{{/*
A Go duration (1h30m, 500ms, 24h) in seconds, as a float: for the checks
between settings below. The schema has already checked the syntax.
*/}}
{{- define "orchestrator.durationSeconds" -}}
{{- $units := dict "ns" 1e-9 "us" 1e-6 "µs" 1e-6 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 }}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h)" (toString .) -1 }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" . }}
{{- $total = addf $total (mulf (float64 $number) (get $units (trimPrefix $number .))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
Checks between settings that the schema cannot express; the binary makes
the same checks at startup, but a failed render says it sooner than a pod
that exits with code 2.
*/}}
{{- define "orchestrator.validateConfig" -}}
{{- $agents := .Values.config.agents }}
{{- $tasks := .Values.config.tasks }}
{{- $interval := include "orchestrator.durationSeconds" $agents.heartbeatInterval | float64 }}
{{- $unreachable := mulf $interval ($agents.missedHeartbeats | float64) }}
{{- if le (include "orchestrator.durationSeconds" $agents.evictAfter | float64) $unreachable }}
{{- fail (printf "config.agents.evictAfter=%s (AGENT_EVICT_AFTER) must be longer than config.agents.missedHeartbeats x config.agents.heartbeatInterval (%d x %s), after which an agent is only unreachable" $agents.evictAfter ($agents.missedHeartbeats | int) $agents.heartbeatInterval) }}
{{- end }}
{{- if lt ($agents.maxMetadataTotalBytes | float64) ($agents.maxMetadataBytes | float64) }}
{{- fail (printf "config.agents.maxMetadataTotalBytes=%d (AGENT_MAX_METADATA_TOTAL_BYTES) must be at least config.agents.maxMetadataBytes=%d, or metadata that limit admits could never be stored" ($agents.maxMetadataTotalBytes | int64) ($agents.maxMetadataBytes | int64)) }}
{{- end }}
{{- if lt (include "orchestrator.durationSeconds" $tasks.retryBackoffMax | float64) (include "orchestrator.durationSeconds" $tasks.retryBackoff | float64) }}
{{- fail (printf "config.tasks.retryBackoffMax=%s (TASK_RETRY_BACKOFF_MAX) must be at least config.tasks.retryBackoff=%s" $tasks.retryBackoffMax $tasks.retryBackoff) }}
{{- end }}
{{- range list (list "retention" "TASK_RETENTION") (list "retryBackoff" "TASK_RETRY_BACKOFF") }}
{{- $value := get $tasks (index . 0) }}
{{- if le (include "orchestrator.durationSeconds" $value | float64) 0.0 }}
{{- fail (printf "config.tasks.%s=%s (%s) must be greater than 0" (index . 0) $value (index . 1)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Auth: where each role's tokens come from. The Secret is the chart's own
(auth.agentTokens, auth.operatorTokens) or auth.existingSecret; a role's
key is empty when the role is open.
*/}}
{{- define "orchestrator.validateAuth" -}}
{{- $a := .Values.auth }}
{{- /* A null list (a values file with "agentTokens:" and nothing after it,
or a substitution that came out empty) deletes the key. Failing here
keeps an empty value from switching a role's auth off; the default []
is how a role is left open. */}}
{{- range list "agentTokens" "operatorTokens" }}
{{- if or (not (hasKey $a .)) (kindIs "invalid" (get $a .)) }}
{{- fail (printf "auth.%s is null: give it at least one token, or leave it [] (the default) to keep that role open; an empty value never switches auth off" .) }}
{{- end }}
{{- end }}
{{- if $a.existingSecret }}
{{- if or $a.agentTokens $a.operatorTokens }}
{{- fail "auth.existingSecret is set: leave auth.agentTokens and auth.operatorTokens empty (the tokens come from that Secret)" }}
{{- end }}
{{- if not (or $a.existingSecretKeys.agent $a.existingSecretKeys.operator) }}
{{- fail (printf "auth.existingSecret=%s protects nothing: name its key with the agent tokens (auth.existingSecretKeys.agent), the operator tokens (auth.existingSecretKeys.operator), or both" $a.existingSecret) }}
{{- end }}
{{- else if or $a.existingSecretKeys.agent $a.existingSecretKeys.operator }}
{{- fail "auth.existingSecretKeys names keys but auth.existingSecret is empty: name the Secret, or use auth.agentTokens and auth.operatorTokens" }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if and (has .name (list "AUTH_AGENT_TOKENS" "AUTH_OPERATOR_TOKENS")) (hasKey . "value") }}
{{- fail (printf "extraEnv sets %s to a literal token: tokens must not sit in the pod spec; use auth.agentTokens, auth.operatorTokens or auth.existingSecret (mounted as files)" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "orchestrator.authSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-auth" (include "orchestrator.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/* The Secret key with the agent tokens; empty: the agent role is open. */}}
{{- define "orchestrator.authAgentKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKeys.agent }}{{ else if .Values.auth.agentTokens }}agent-tokens{{ end }}
{{- end }}

{{/* The Secret key with the operator tokens; empty: the operator role is open. */}}
{{- define "orchestrator.authOperatorKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKeys.operator }}{{ else if .Values.auth.operatorTokens }}operator-tokens{{ end }}
{{- end }}

{{/* Where the token files are mounted in the container. */}}
{{- define "orchestrator.authDir" -}}/etc/orchestrator/auth{{- end }}

{{/*
The checksum that rolls the pods when the tokens change (they are read at
startup): the chart's own Secret as rendered, or the content of
auth.existingSecret when helm can read it (install and upgrade; `helm
template` and --dry-run see nothing, so only its name and keys count then).
*/}}
{{- define "orchestrator.authChecksum" -}}
{{- if .Values.auth.existingSecret }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.auth.existingSecret }}
{{- list .Values.auth.existingSecret .Values.auth.existingSecretKeys (dig "data" dict ($secret | default dict)) | toJson | sha256sum }}
{{- else }}
{{- include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}
