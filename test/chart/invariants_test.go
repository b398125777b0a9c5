//go:build chart

package chart_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/optiinfra/orchestrator/internal/config"
)

func TestMatrixInvariants(t *testing.T) {
	renderMatrix(t, checkInvariants)
}

func TestManifestsInvariants(t *testing.T) {
	o := manifests(t)
	checkInvariants(t, o)
	if len(o.pods) != 0 {
		t.Errorf("k8s/ holds %d helm test pods; plain manifests should not", len(o.pods))
	}
	if len(o.namespaces) != 1 || o.namespaces[0].Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("k8s/ should create its namespace with pod-security.kubernetes.io/enforce=restricted: %+v", o.namespaces)
	}
}

// checkInvariants holds for every rendering: the checks a reviewer would
// otherwise do by eye on each values file.
func checkInvariants(t *testing.T, o *objects) {
	t.Helper()
	if len(o.deployments) != 1 || len(o.services) != 1 || len(o.configMaps) != 1 {
		t.Fatalf("want one Deployment, Service and ConfigMap; got %v", o.kinds)
	}
	d, svc := o.deployments[0], o.services[0]
	pod := d.Spec.Template
	c := container(t, pod.Spec, "orchestrator")

	t.Run("probes and port", func(t *testing.T) {
		port := namedPort(t, c, "http")
		for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
			want := "/live"
			if name == "readiness" {
				want = "/ready"
			}
			if p == nil || p.HTTPGet == nil {
				t.Errorf("%s probe is not httpGet", name)
				continue
			}
			if p.HTTPGet.Path != want || p.HTTPGet.Port != intstr.FromString("http") {
				t.Errorf("%s probe = %s on %s, want %s on the named port http", name, p.HTTPGet.Path, p.HTTPGet.Port.String(), want)
			}
		}
		// The port the binary listens on is the one the configuration gives
		// it: load that configuration the way the binary does.
		cfg := binaryConfig(t, o, c)
		if cfg.Server.Port != int(port) {
			t.Errorf("the binary listens on %d, the container port http is %d", cfg.Server.Port, port)
		}
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "http" || svc.Spec.Ports[0].TargetPort != intstr.FromString("http") {
			t.Errorf("Service ports = %+v, want one port named http targeting the container port http", svc.Spec.Ports)
		}
	})

	t.Run("grace budget", func(t *testing.T) {
		cfg := binaryConfig(t, o, c)
		preStop := time.Duration(0)
		if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
			if c.Lifecycle.PreStop.Sleep == nil {
				t.Fatalf("preStop is not the native sleep action: %+v", c.Lifecycle.PreStop)
			}
			preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
		}
		need := preStop + cfg.Server.ShutdownDelay + cfg.Server.ShutdownTimeout
		grace := pod.Spec.TerminationGracePeriodSeconds
		if grace == nil || time.Duration(*grace)*time.Second <= need {
			t.Errorf("terminationGracePeriodSeconds %v leaves no slack over preStop %s + SHUTDOWN_DELAY %s + SHUTDOWN_TIMEOUT %s",
				grace, preStop, cfg.Server.ShutdownDelay, cfg.Server.ShutdownTimeout)
		}
		if preStop == 0 && cfg.Server.ShutdownDelay < 5*time.Second {
			t.Errorf("without a preStop sleep SHUTDOWN_DELAY is %s; it alone must cover the endpoint removal", cfg.Server.ShutdownDelay)
		}
	})

	t.Run("restricted", func(t *testing.T) {
		checkRestricted(t, "Deployment", pod.Spec)
		for _, p := range o.pods {
			checkRestricted(t, "test pod "+p.Name, p.Spec)
		}
		if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
			t.Error("enableServiceLinks is not false: a Service named orchestrator would inject ORCHESTRATOR_PORT=tcp://...")
		}
		for _, sa := range o.serviceAccounts {
			if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
				t.Errorf("ServiceAccount %s mounts its token", sa.Name)
			}
		}
	})

	t.Run("selectors", func(t *testing.T) {
		podLabels := pod.Labels
		if d.Spec.Selector == nil || !subset(d.Spec.Selector.MatchLabels, podLabels) || len(d.Spec.Selector.MatchExpressions) > 0 {
			t.Errorf("Deployment selector %v does not match the pod labels %v", d.Spec.Selector, podLabels)
		}
		if !subset(svc.Spec.Selector, podLabels) || len(svc.Spec.Selector) == 0 {
			t.Errorf("Service selector %v does not match the pod labels %v", svc.Spec.Selector, podLabels)
		}
		for _, pdb := range o.pdbs {
			if pdb.Spec.Selector == nil || !subset(pdb.Spec.Selector.MatchLabels, podLabels) {
				t.Errorf("PodDisruptionBudget selector %v does not match the pod labels", pdb.Spec.Selector)
			}
		}
		for _, hpa := range o.hpas {
			if ref := hpa.Spec.ScaleTargetRef; ref.Kind != "Deployment" || ref.Name != d.Name {
				t.Errorf("HPA targets %s/%s, want Deployment/%s", ref.Kind, ref.Name, d.Name)
			}
			if d.Spec.Replicas != nil {
				t.Error("the Deployment sets replicas while an HPA scales it")
			}
		}
		for _, np := range o.networkPolicies {
			if !subset(np.Spec.PodSelector.MatchLabels, podLabels) || len(np.Spec.PodSelector.MatchLabels) == 0 {
				t.Errorf("NetworkPolicy podSelector %v does not match the pod labels", np.Spec.PodSelector)
			}
		}
		for _, sm := range o.serviceMonitors {
			if !subset(sm.Spec.Selector.MatchLabels, svc.Labels) || len(sm.Spec.Endpoints) == 0 ||
				sm.Spec.Endpoints[0].Port != "http" || sm.Spec.Endpoints[0].Path != "/metrics" {
				t.Errorf("ServiceMonitor %+v does not scrape the Service's http port at /metrics", sm.Spec)
			}
			if len(sm.Spec.NamespaceSelector.MatchNames) != 1 || sm.Spec.NamespaceSelector.MatchNames[0] != svc.Namespace {
				t.Errorf("ServiceMonitor selects namespaces %v, want only %s", sm.Spec.NamespaceSelector.MatchNames, svc.Namespace)
			}
		}
		for _, ing := range o.ingresses {
			for _, rule := range ing.Spec.Rules {
				for _, p := range rule.HTTP.Paths {
					if b := p.Backend.Service; b == nil || b.Name != svc.Name || b.Port.Name != "http" {
						t.Errorf("Ingress path %s goes to %+v, want Service %s port http", p.Path, b, svc.Name)
					}
				}
			}
		}
		for _, spread := range pod.Spec.TopologySpreadConstraints {
			if spread.LabelSelector == nil || !subset(spread.LabelSelector.MatchLabels, podLabels) {
				t.Errorf("topology spread %s counts pods %v, not these", spread.TopologyKey, spread.LabelSelector)
			}
		}
	})

	t.Run("auth tokens", func(t *testing.T) {
		checkTokens(t, o, pod.Spec, c, pod.Annotations)
	})

	t.Run("helm test", func(t *testing.T) {
		for _, p := range o.pods {
			tc := p.Spec.Containers[0]
			if tc.Image != c.Image {
				t.Errorf("test pod image %s, want the orchestrator's own %s", tc.Image, c.Image)
			}
			args := strings.Join(tc.Args, " ")
			for _, path := range []string{"/ready", "/health"} {
				want := fmt.Sprintf("http://%s:%d%s", svc.Name, svc.Spec.Ports[0].Port, path)
				if tc.Args[0] != "probe" || !strings.Contains(args, want) {
					t.Errorf("test pod args %q do not probe %s", args, want)
				}
			}
		}
	})
}

// binaryConfig loads the configuration the container's environment gives
// the binary, with the binary's own loader: a rendering that the service
// would reject at startup fails here.
func binaryConfig(t *testing.T, o *objects, c corev1.Container) *config.Config {
	t.Helper()
	env := map[string]string{}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil {
			continue
		}
		for _, cm := range o.configMaps {
			if cm.Name == from.ConfigMapRef.Name {
				maps.Copy(env, cm.Data)
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		}
	}
	tokenFiles(t, o, c, pod(o), env)
	cfg, err := config.Load(context.Background(), env)
	if err != nil {
		t.Fatalf("the binary would not start with this rendering's environment: %v", err)
	}
	return cfg
}

// checkRestricted checks the Pod Security Standard "restricted" fields.
func checkRestricted(t *testing.T, what string, spec corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("%s uses host namespaces", what)
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			t.Errorf("%s mounts a hostPath", what)
		}
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s mounts the service account token", what)
	}
	for _, c := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s container %s has no securityContext", what, c.Name)
			continue
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s container %s is privileged", what, c.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s container %s allows privilege escalation", what, c.Name)
		}
		if sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s container %s capabilities = %+v, want drop [ALL] and nothing added", what, c.Name, sc.Capabilities)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s container %s has a writable root filesystem", what, c.Name)
		}
		nonRoot := sc.RunAsNonRoot
		if nonRoot == nil && psc != nil {
			nonRoot = psc.RunAsNonRoot
		}
		if nonRoot == nil || !*nonRoot {
			t.Errorf("%s container %s may run as root", what, c.Name)
		}
		uid := sc.RunAsUser
		if uid == nil && psc != nil {
			uid = psc.RunAsUser
		}
		if uid == nil || *uid == 0 {
			t.Errorf("%s container %s has no numeric non-root runAsUser", what, c.Name)
		}
		seccomp := sc.SeccompProfile
		if seccomp == nil && psc != nil {
			seccomp = psc.SeccompProfile
		}
		if seccomp == nil || (seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault && seccomp.Type != corev1.SeccompProfileTypeLocalhost) {
			t.Errorf("%s container %s has no RuntimeDefault or Localhost seccomp profile", what, c.Name)
		}
	}
}

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

func namedPort(t *testing.T, c corev1.Container, name string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s has no port named %s", c.Name, name)
	return 0
}

// subset reports whether every label of sel is in labels.
func subset(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// pod is the Deployment's pod template spec.
func pod(o *objects) corev1.PodSpec { return o.deployments[0].Spec.Template.Spec }

// tokenFiles makes the token files the container's AUTH_*_TOKENS_FILE
// variables name, from the Secret they are mounted from, and points the
// variables at them: the binary then loads them as it would in the pod. A
// Secret the chart does not render (auth.existingSecret) gets a placeholder
// token.
func tokenFiles(t *testing.T, o *objects, c corev1.Container, spec corev1.PodSpec, env map[string]string) {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"AUTH_AGENT_TOKENS_FILE", "AUTH_OPERATOR_TOKENS_FILE"} {
		file, ok := env[name]
		if !ok {
			continue
		}
		content, ok := mountedSecretFile(t, o, c, spec, file)
		if !ok {
			t.Errorf("%s=%s is not a file mounted from a Secret", name, file)
			continue
		}
		local := filepath.Join(dir, name)
		if err := os.WriteFile(local, content, 0o600); err != nil {
			t.Fatal(err)
		}
		env[name] = local
	}
}

// mountedSecretFile returns the content of the file at path in container c
// when it comes from a Secret volume: the Secret's key if the rendering has
// the Secret, a placeholder token if it names one from outside.
func mountedSecretFile(t *testing.T, o *objects, c corev1.Container, spec corev1.PodSpec, file string) ([]byte, bool) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			key := rel
			for _, item := range v.Secret.Items {
				if path.Clean(item.Path) == rel {
					key = item.Key
				}
			}
			for _, s := range o.secrets {
				if s.Name == v.Secret.SecretName {
					data, ok := s.Data[key]
					if !ok {
						t.Errorf("Secret %s has no key %s for %s", s.Name, key, file)
					}
					return data, ok
				}
			}
			return []byte("placeholder-token-for-an-existing-secret\n"), true
		}
	}
	return nil, false
}

// checkTokens: tokens reach the pod only as read-only files from a Secret;
// no token is in the ConfigMap or the environment, and the pods roll when
// the tokens change.
func checkTokens(t *testing.T, o *objects, spec corev1.PodSpec, c corev1.Container, annotations map[string]string) {
	t.Helper()
	for _, e := range c.Env {
		if (e.Name == "AUTH_AGENT_TOKENS" || e.Name == "AUTH_OPERATOR_TOKENS") && e.Value != "" {
			t.Errorf("%s is set in the pod spec: tokens must come from a mounted Secret file", e.Name)
		}
	}
	for _, cm := range o.configMaps {
		for k := range cm.Data {
			if strings.HasPrefix(k, "AUTH_") {
				t.Errorf("ConfigMap %s sets %s: auth settings belong to the pod spec and the Secret", cm.Name, k)
			}
		}
	}
	for _, s := range o.secrets {
		for key, data := range s.Data {
			for token := range strings.Lines(string(data)) {
				token = strings.TrimSpace(token)
				if token == "" {
					continue
				}
				for _, cm := range o.configMaps {
					for k, v := range cm.Data {
						if strings.Contains(v, token) {
							t.Errorf("ConfigMap %s %s holds a token of Secret %s key %s", cm.Name, k, s.Name, key)
						}
					}
				}
				for _, e := range c.Env {
					if strings.Contains(e.Value, token) {
						t.Errorf("env %s holds a token of Secret %s key %s", e.Name, s.Name, key)
					}
				}
			}
		}
	}
	secretVolumes := map[string]bool{}
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			secretVolumes[v.Name] = true
		}
	}
	for _, m := range c.VolumeMounts {
		if secretVolumes[m.Name] && !m.ReadOnly {
			t.Errorf("Secret volume %s is mounted writable at %s", m.Name, m.MountPath)
		}
	}
	if len(secretVolumes) > 0 && annotations["checksum/auth"] == "" {
		t.Error("the pods mount a token Secret but have no checksum/auth annotation: changed tokens would not roll them")
	}
	if len(o.secrets) > 0 && len(secretVolumes) == 0 {
		t.Errorf("the chart renders Secret %s but the pods do not mount it", o.secrets[0].Name)
	}
}
