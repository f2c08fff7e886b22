package validate

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func ptr[T any](v T) *T { return &v }

// goodPod meets "restricted" with everything set at container level and at
// pod level; each case below breaks one field.
func goodPod() *corev1.PodTemplateSpec {
	sc := func() *corev1.SecurityContext {
		return &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			AllowPrivilegeEscalation: ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		}
	}
	return &corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot:   ptr(true),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		InitContainers: []corev1.Container{{Name: "sidecar", SecurityContext: sc()}},
		Containers:     []corev1.Container{{Name: "app", SecurityContext: sc(), Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}},
		Volumes: []corev1.Volume{
			{Name: "keys", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "k"}}},
			{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		},
	}}
}

func TestRestrictedAcceptsGoodPod(t *testing.T) {
	if v := Restricted(goodPod()); len(v) != 0 {
		t.Fatalf("violations in a restricted pod: %v", v)
	}
	p := goodPod()
	p.Spec.Containers[0].SecurityContext.Capabilities.Add = []corev1.Capability{"NET_BIND_SERVICE"}
	p.Spec.Containers[0].SecurityContext.SeccompProfile = nil // the pod's applies
	p.Spec.Containers[0].SecurityContext.RunAsNonRoot = nil   // the pod's applies
	if v := Restricted(p); len(v) != 0 {
		t.Fatalf("NET_BIND_SERVICE and pod-level defaults refused: %v", v)
	}
}

// TestRestrictedCatchesEachViolation breaks one field at a time and expects
// a violation naming it.
func TestRestrictedCatchesEachViolation(t *testing.T) {
	app := func(p *corev1.PodTemplateSpec) *corev1.SecurityContext { return p.Spec.Containers[0].SecurityContext }
	side := func(p *corev1.PodTemplateSpec) *corev1.SecurityContext {
		return p.Spec.InitContainers[0].SecurityContext
	}
	for _, c := range []struct {
		name    string
		breakIt func(*corev1.PodTemplateSpec)
		want    string
	}{
		{"hostNetwork", func(p *corev1.PodTemplateSpec) { p.Spec.HostNetwork = true }, "hostNetwork"},
		{"hostPID", func(p *corev1.PodTemplateSpec) { p.Spec.HostPID = true }, "hostPID"},
		{"hostIPC", func(p *corev1.PodTemplateSpec) { p.Spec.HostIPC = true }, "hostIPC"},
		{"hostPath volume", func(p *corev1.PodTemplateSpec) {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}})
		}, "hostPath"},
		{"nfs volume", func(p *corev1.PodTemplateSpec) {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "n", VolumeSource: corev1.VolumeSource{NFS: &corev1.NFSVolumeSource{Server: "s", Path: "/"}}})
		}, "nfs"},
		{"privileged", func(p *corev1.PodTemplateSpec) { app(p).Privileged = ptr(true) }, "privileged"},
		{"allowPrivilegeEscalation unset", func(p *corev1.PodTemplateSpec) { side(p).AllowPrivilegeEscalation = nil }, "allowPrivilegeEscalation"},
		{"allowPrivilegeEscalation true", func(p *corev1.PodTemplateSpec) { app(p).AllowPrivilegeEscalation = ptr(true) }, "allowPrivilegeEscalation"},
		{"no securityContext", func(p *corev1.PodTemplateSpec) { p.Spec.Containers[0].SecurityContext = nil }, "allowPrivilegeEscalation"},
		{"runAsNonRoot false on container", func(p *corev1.PodTemplateSpec) { app(p).RunAsNonRoot = ptr(false) }, "runAsNonRoot"},
		{"runAsNonRoot false on pod", func(p *corev1.PodTemplateSpec) { p.Spec.SecurityContext.RunAsNonRoot = ptr(false) }, "runAsNonRoot"},
		{"runAsNonRoot nowhere", func(p *corev1.PodTemplateSpec) {
			p.Spec.SecurityContext.RunAsNonRoot = nil
			app(p).RunAsNonRoot = nil
		}, "runAsNonRoot must be true"},
		{"runAsUser 0 on container", func(p *corev1.PodTemplateSpec) { app(p).RunAsUser = ptr(int64(0)) }, "runAsUser"},
		{"runAsUser 0 on pod", func(p *corev1.PodTemplateSpec) { p.Spec.SecurityContext.RunAsUser = ptr(int64(0)) }, "runAsUser"},
		{"seccomp nowhere", func(p *corev1.PodTemplateSpec) {
			p.Spec.SecurityContext.SeccompProfile = nil
			side(p).SeccompProfile = nil
		}, "seccompProfile"},
		{"seccomp Unconfined on container", func(p *corev1.PodTemplateSpec) {
			app(p).SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}
		}, "seccompProfile"},
		{"seccomp Unconfined on pod", func(p *corev1.PodTemplateSpec) {
			p.Spec.SecurityContext.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}
		}, "seccompProfile"},
		{"capabilities not dropped", func(p *corev1.PodTemplateSpec) { app(p).Capabilities = nil }, "drop ALL"},
		{"capabilities drop other", func(p *corev1.PodTemplateSpec) { side(p).Capabilities.Drop = []corev1.Capability{"NET_RAW"} }, "drop ALL"},
		{"capability added", func(p *corev1.PodTemplateSpec) { app(p).Capabilities.Add = []corev1.Capability{"NET_ADMIN"} }, "NET_ADMIN"},
		{"hostPort", func(p *corev1.PodTemplateSpec) { p.Spec.Containers[0].Ports[0].HostPort = 8080 }, "hostPort"},
		{"procMount", func(p *corev1.PodTemplateSpec) { app(p).ProcMount = ptr(corev1.UnmaskedProcMount) }, "procMount"},
		{"unsafe sysctl", func(p *corev1.PodTemplateSpec) {
			p.Spec.SecurityContext.Sysctls = []corev1.Sysctl{{Name: "kernel.msgmax", Value: "1"}}
		}, "sysctl"},
		{"SELinux type", func(p *corev1.PodTemplateSpec) { app(p).SELinuxOptions = &corev1.SELinuxOptions{Type: "spc_t"} }, "seLinuxOptions"},
		{"SELinux user", func(p *corev1.PodTemplateSpec) {
			p.Spec.SecurityContext.SELinuxOptions = &corev1.SELinuxOptions{User: "system_u"}
		}, "seLinuxOptions"},
		{"AppArmor unconfined", func(p *corev1.PodTemplateSpec) {
			app(p).AppArmorProfile = &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined}
		}, "appArmorProfile"},
		{"AppArmor annotation", func(p *corev1.PodTemplateSpec) {
			p.Annotations = map[string]string{corev1.DeprecatedAppArmorBetaContainerAnnotationKeyPrefix + "app": "unconfined"}
		}, "AppArmor"},
		{"windows hostProcess", func(p *corev1.PodTemplateSpec) {
			app(p).WindowsOptions = &corev1.WindowsSecurityContextOptions{HostProcess: ptr(true)}
		}, "hostProcess"},
		{"ephemeral container", func(p *corev1.PodTemplateSpec) {
			p.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug"}}}
		}, `ephemeralContainer "debug"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := goodPod()
			c.breakIt(p)
			v := Restricted(p)
			if len(v) == 0 {
				t.Fatal("no violation found")
			}
			found := false
			for _, line := range v {
				found = found || strings.Contains(line, c.want)
			}
			if !found {
				t.Fatalf("no violation mentions %q: %v", c.want, v)
			}
		})
	}
}
