//go:build chart

package chart_test

import (
	"context"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
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
	if len(o.deployments) != 1 || len(o.configMaps) != 1 {
		t.Fatalf("want one Deployment and one ConfigMap; got %v", o.kinds)
	}
	d := o.deployments[0]
	svc := named(t, o.services, d.Name)
	pod := d.Spec.Template
	c := orchestrator(t, pod.Spec)

	t.Run("port", func(t *testing.T) {
		// The port the binary listens on is the one the configuration gives
		// it: load that configuration the way the binary does.
		port := namedPort(t, c, "http")
		cfg := binaryConfig(t, o, c)
		if cfg.Server.Port != int(port) {
			t.Errorf("the binary listens on %d, the container port http is %d", cfg.Server.Port, port)
		}
		// The probes and the Service reach it by that name.
		for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Port != intstr.FromString("http") {
				t.Errorf("%s probe %+v is not an httpGet on the port named http", name, p)
			}
		}
		if len(svc.Spec.Ports) == 0 {
			t.Fatal("the Service has no port")
		}
		for _, p := range svc.Spec.Ports {
			if p.TargetPort != intstr.FromString("http") {
				t.Errorf("Service port %s targets %s, not the container port named http", p.Name, p.TargetPort.String())
			}
		}
	})

	t.Run("GOMEMLIMIT", func(t *testing.T) {
		checkGoMemLimit(t, c)
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
		for _, sts := range o.statefulSets {
			checkRestricted(t, "StatefulSet "+sts.Name, sts.Spec.Template.Spec)
			if links := sts.Spec.Template.Spec.EnableServiceLinks; links == nil || *links {
				t.Errorf("StatefulSet %s: enableServiceLinks is not false", sts.Name)
			}
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
		// The Deployment selects its pods by the release and the chart's
		// name only: two releases never select each other's pods, and
		// nothing that changes between versions is in a selector (a
		// Deployment's cannot change).
		podLabels := pod.Labels
		if d.Spec.Selector == nil || len(d.Spec.Selector.MatchExpressions) > 0 {
			t.Fatalf("Deployment selector %v: want matchLabels only", d.Spec.Selector)
		}
		selector := d.Spec.Selector.MatchLabels
		if len(selector) != 2 || selector["app.kubernetes.io/name"] == "" || selector["app.kubernetes.io/instance"] == "" ||
			!subset(selector, podLabels) {
			t.Errorf("Deployment selector %v: want exactly app.kubernetes.io/name and app.kubernetes.io/instance, matching the pod labels %v",
				selector, podLabels)
		}
		// Everything else that picks the pods picks exactly those.
		if !maps.Equal(svc.Spec.Selector, selector) {
			t.Errorf("Service selector %v, want the Deployment's %v", svc.Spec.Selector, selector)
		}
		// The bundled database's objects pick its pods, and nothing picks
		// both its pods and the orchestrator's.
		for _, sts := range o.statefulSets {
			own := sts.Spec.Selector.MatchLabels
			if len(own) == 0 || !subset(own, sts.Spec.Template.Labels) {
				t.Errorf("StatefulSet %s selector %v does not pick its own pods %v", sts.Name, own, sts.Spec.Template.Labels)
			}
			if subset(selector, sts.Spec.Template.Labels) || subset(own, podLabels) {
				t.Errorf("StatefulSet %s pods %v and the orchestrator's %v are picked by each other's selectors", sts.Name, sts.Spec.Template.Labels, podLabels)
			}
		}
		for _, s := range o.services {
			if s.Name == svc.Name {
				continue
			}
			if sts := selectedStatefulSet(o, s.Spec.Selector); sts == nil {
				t.Errorf("Service %s selector %v picks no StatefulSet's pods exactly", s.Name, s.Spec.Selector)
			}
		}
		for _, pdb := range o.pdbs {
			if pdb.Spec.Selector == nil || !maps.Equal(pdb.Spec.Selector.MatchLabels, selector) {
				t.Errorf("PodDisruptionBudget selector %v, want the Deployment's %v", pdb.Spec.Selector, selector)
			}
		}
		for _, hpa := range o.hpas {
			if ref := hpa.Spec.ScaleTargetRef; ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != d.Name {
				t.Errorf("HPA targets %s %s/%s, want apps/v1 Deployment/%s", ref.APIVersion, ref.Kind, ref.Name, d.Name)
			}
			if d.Spec.Replicas != nil {
				t.Error("the Deployment sets replicas while an HPA scales it")
			}
		}
		for _, np := range o.networkPolicies {
			if np.Name == d.Name {
				if !maps.Equal(np.Spec.PodSelector.MatchLabels, selector) {
					t.Errorf("NetworkPolicy podSelector %v, want the Deployment's %v", np.Spec.PodSelector, selector)
				}
				continue
			}
			// The database's: it picks the StatefulSet's pods, and admits
			// the orchestrator's alone.
			if selectedStatefulSet(o, np.Spec.PodSelector.MatchLabels) == nil {
				t.Errorf("NetworkPolicy %s podSelector %v picks no StatefulSet's pods exactly", np.Name, np.Spec.PodSelector)
			}
			for _, rule := range np.Spec.Ingress {
				if len(rule.From) == 0 {
					t.Errorf("NetworkPolicy %s admits everyone", np.Name)
				}
				for _, from := range rule.From {
					if from.PodSelector == nil || from.NamespaceSelector != nil || from.IPBlock != nil ||
						!maps.Equal(from.PodSelector.MatchLabels, selector) {
						t.Errorf("NetworkPolicy %s admits %+v, want the orchestrator's pods %v only", np.Name, from, selector)
					}
				}
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
		// The matrix gives no labelSelector: the chart fills in the pods' own.
		for _, spread := range pod.Spec.TopologySpreadConstraints {
			if spread.LabelSelector == nil || !maps.Equal(spread.LabelSelector.MatchLabels, selector) {
				t.Errorf("topology spread %s counts pods %v, want the Deployment's %v", spread.TopologyKey, spread.LabelSelector, selector)
			}
		}
	})

	t.Run("auth tokens", func(t *testing.T) {
		checkTokens(t, o, pod.Spec, c, pod.Annotations)
	})

	t.Run("database", func(t *testing.T) {
		checkDatabase(t, o, d, c)
	})

	t.Run("helm test", func(t *testing.T) {
		// Nothing else to pull: the test pod runs the orchestrator's own
		// image, however it is named (tag, digest, private registry).
		for _, p := range o.pods {
			if tc := p.Spec.Containers[0]; tc.Image != c.Image || tc.ImagePullPolicy != c.ImagePullPolicy {
				t.Errorf("test pod image %s (%s), want the orchestrator's own %s (%s)", tc.Image, tc.ImagePullPolicy, c.Image, c.ImagePullPolicy)
			}
			if !slices.Equal(p.Spec.ImagePullSecrets, pod.Spec.ImagePullSecrets) {
				t.Errorf("test pod pull secrets %v, want the Deployment's %v", p.Spec.ImagePullSecrets, pod.Spec.ImagePullSecrets)
			}
		}
	})
}

// checkGoMemLimit: GOMEMLIMIT is 90% of the container's memory limit (the
// limit less a tenth of it, rounded down), as Kubernetes itself reads that
// quantity, and absent without a limit (the Go runtime then has none).
func checkGoMemLimit(t *testing.T, c corev1.Container) {
	t.Helper()
	var env *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "GOMEMLIMIT" {
			env = &c.Env[i]
		}
	}
	limit, ok := c.Resources.Limits[corev1.ResourceMemory]
	if !ok {
		if env != nil {
			t.Errorf("GOMEMLIMIT is set (%+v) but the container has no memory limit", *env)
		}
		return
	}
	bytes := limit.Value()
	want := strconv.FormatInt(bytes-bytes/10, 10)
	if env == nil || env.ValueFrom != nil || env.Value != want {
		t.Errorf("GOMEMLIMIT = %+v, want %s (90%% of the memory limit %s = %d bytes)", env, want, limit.String(), bytes)
	}
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
	secretFiles(t, o, c, pod(o), env)
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

// orchestrator is the pod's container named orchestrator.
func orchestrator(t *testing.T, spec corev1.PodSpec) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == "orchestrator" {
			return c
		}
	}
	t.Fatal("no container named orchestrator")
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

// secretFiles makes the files the container's AUTH_*_TOKENS_FILE and
// DATABASE_URL_FILE variables name, from the Secret they are mounted from,
// and points the variables at them: the binary then loads them as it would
// in the pod. A Secret the chart does not render (auth.existingSecret,
// database.existingSecret) gets a placeholder of the right form.
func secretFiles(t *testing.T, o *objects, c corev1.Container, spec corev1.PodSpec, env map[string]string) {
	t.Helper()
	dir := t.TempDir()
	placeholders := map[string]string{
		"AUTH_AGENT_TOKENS_FILE":    "placeholder-token-for-an-existing-secret\n",
		"AUTH_OPERATOR_TOKENS_FILE": "placeholder-token-for-an-existing-secret\n",
		"DATABASE_URL_FILE":         externalDatabaseURL + "\n",
	}
	for name, placeholder := range placeholders {
		file, ok := env[name]
		if !ok {
			continue
		}
		content, rendered, ok := mountedSecretFile(t, o, c, spec, file)
		if !ok {
			t.Errorf("%s=%s is not a file mounted from a Secret", name, file)
			continue
		}
		if !rendered {
			content = []byte(placeholder)
		}
		local := filepath.Join(dir, name)
		if err := os.WriteFile(local, content, 0o600); err != nil {
			t.Fatal(err)
		}
		env[name] = local
	}
}

// mountedSecretFile returns the content of the file at path in container c
// when it comes from a Secret volume (ok): the Secret's key if the rendering
// has the Secret (rendered), nothing if it names one from outside.
func mountedSecretFile(t *testing.T, o *objects, c corev1.Container, spec corev1.PodSpec, file string) (data []byte, rendered, ok bool) {
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
					return data, true, ok
				}
			}
			return nil, false, true
		}
	}
	return nil, false, false
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

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
	// No token anywhere but in its Secret: not in the ConfigMap, the pod
	// spec, an annotation or the helm test pod.
	for _, s := range o.secrets {
		for key, data := range s.Data {
			for token := range strings.Lines(string(data)) {
				token = strings.TrimSpace(token)
				if token == "" {
					continue
				}
				for _, doc := range o.docs {
					if doc.kind != "Secret" && strings.Contains(doc.text, token) {
						t.Errorf("a %s holds a token of Secret %s key %s", doc.kind, s.Name, key)
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
	// What is read at startup rolls the pods when it changes.
	for volume, annotation := range map[string]string{"auth-tokens": "checksum/auth", "database-url": "checksum/database"} {
		if secretVolumes[volume] && !sha256Hex.MatchString(annotations[annotation]) {
			t.Errorf("the pods mount Secret volume %s but their %s annotation is %q, not a SHA-256: a change would not roll them",
				volume, annotation, annotations[annotation])
		}
	}
	// Every Secret the chart renders is mounted by some pod.
	mounted := map[string]bool{}
	specs := []corev1.PodSpec{spec}
	for _, sts := range o.statefulSets {
		specs = append(specs, sts.Spec.Template.Spec)
	}
	for _, s := range specs {
		for _, v := range s.Volumes {
			if v.Secret != nil {
				mounted[v.Secret.SecretName] = true
			}
		}
	}
	for _, s := range o.secrets {
		if !mounted[s.Name] {
			t.Errorf("the chart renders Secret %s but no pod mounts it", s.Name)
		}
	}
}

// named is the object of the list with that name.
func named[T any, P interface {
	*T
	GetName() string
}](t *testing.T, list []T, name string) T {
	t.Helper()
	for i := range list {
		if P(&list[i]).GetName() == name {
			return list[i]
		}
	}
	t.Fatalf("no %T named %s", list, name)
	var zero T
	return zero
}

// selectedStatefulSet is the StatefulSet whose pods the selector picks with
// exactly its own selector, or nil.
func selectedStatefulSet(o *objects, selector map[string]string) *appsv1.StatefulSet {
	for i, sts := range o.statefulSets {
		if len(selector) > 0 && maps.Equal(selector, sts.Spec.Selector.MatchLabels) {
			return &o.statefulSets[i]
		}
	}
	return nil
}
