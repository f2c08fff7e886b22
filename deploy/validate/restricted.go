package validate

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Restricted checks a pod template against the Pod Security Standards
// "restricted" profile (which includes "baseline"), field by field, as the
// Kubernetes 1.33 admission controller does, and returns one line per
// violation (none: the pod would be admitted in a namespace enforcing
// restricted).
func Restricted(t *corev1.PodTemplateSpec) []string {
	var v []string
	bad := func(format string, args ...any) { v = append(v, fmt.Sprintf(format, args...)) }
	spec := &t.Spec
	psc := spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}

	// baseline: host namespaces.
	if spec.HostNetwork {
		bad("hostNetwork must be false")
	}
	if spec.HostPID {
		bad("hostPID must be false")
	}
	if spec.HostIPC {
		bad("hostIPC must be false")
	}
	// restricted: only these volume types (baseline: no hostPath).
	for _, vol := range spec.Volumes {
		if kind := volumeKind(vol.VolumeSource); !slices.Contains(allowedVolumeKinds, kind) {
			bad("volume %q: type %s not allowed (allowed: %s)", vol.Name, kind, strings.Join(allowedVolumeKinds, ", "))
		}
	}
	// baseline: sysctls from the safe set only.
	for _, s := range psc.Sysctls {
		if !slices.Contains(safeSysctls, s.Name) {
			bad("sysctl %q not in the safe set", s.Name)
		}
	}
	// baseline: SELinux and AppArmor; windows host process.
	checkSELinux("pod", psc.SELinuxOptions, bad)
	if p := psc.AppArmorProfile; p != nil && p.Type == corev1.AppArmorProfileTypeUnconfined {
		bad("pod: appArmorProfile must not be Unconfined")
	}
	for k, val := range t.Annotations {
		if strings.HasPrefix(k, corev1.DeprecatedAppArmorBetaContainerAnnotationKeyPrefix) && val == corev1.DeprecatedAppArmorBetaProfileNameUnconfined {
			bad("annotation %s: AppArmor must not be unconfined", k)
		}
	}
	if w := psc.WindowsOptions; w != nil && w.HostProcess != nil && *w.HostProcess {
		bad("pod: windowsOptions.hostProcess must be false")
	}
	// restricted: runAsNonRoot and seccomp at pod level (or on every container).
	podNonRoot := psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
	if psc.RunAsNonRoot != nil && !*psc.RunAsNonRoot {
		bad("pod: runAsNonRoot must not be false")
	}
	if psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		bad("pod: runAsUser must not be 0")
	}
	podSeccomp := checkSeccomp("pod", psc.SeccompProfile, bad)

	each := func(kind string, c corev1.Container) {
		name := fmt.Sprintf("%s %q", kind, c.Name)
		sc := c.SecurityContext
		if sc == nil {
			sc = &corev1.SecurityContext{}
		}
		if sc.Privileged != nil && *sc.Privileged {
			bad("%s: privileged must be false", name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			bad("%s: allowPrivilegeEscalation must be set to false", name)
		}
		switch {
		case sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot:
			bad("%s: runAsNonRoot must not be false", name)
		case sc.RunAsNonRoot == nil && !podNonRoot:
			bad("%s: runAsNonRoot must be true (pod or container)", name)
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			bad("%s: runAsUser must not be 0", name)
		}
		if ok := checkSeccomp(name, sc.SeccompProfile, bad); !ok && !podSeccomp && sc.SeccompProfile == nil {
			bad("%s: seccompProfile must be RuntimeDefault or Localhost (pod or container)", name)
		}
		caps := sc.Capabilities
		if caps == nil || !slices.Contains(caps.Drop, "ALL") {
			bad("%s: capabilities must drop ALL", name)
		}
		if caps != nil {
			for _, add := range caps.Add {
				if add != "NET_BIND_SERVICE" {
					bad("%s: capability %s must not be added (only NET_BIND_SERVICE)", name, add)
				}
			}
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				bad("%s: hostPort %d not allowed", name, p.HostPort)
			}
		}
		if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
			bad("%s: procMount must be Default", name)
		}
		checkSELinux(name, sc.SELinuxOptions, bad)
		if p := sc.AppArmorProfile; p != nil && p.Type == corev1.AppArmorProfileTypeUnconfined {
			bad("%s: appArmorProfile must not be Unconfined", name)
		}
		if w := sc.WindowsOptions; w != nil && w.HostProcess != nil && *w.HostProcess {
			bad("%s: windowsOptions.hostProcess must be false", name)
		}
	}
	for _, c := range spec.InitContainers {
		each("initContainer", c)
	}
	for _, c := range spec.Containers {
		each("container", c)
	}
	for _, e := range spec.EphemeralContainers {
		each("ephemeralContainer", corev1.Container(e.EphemeralContainerCommon))
	}
	return v
}

// checkSeccomp reports an Unconfined (or empty-typed) profile and tells
// whether p is an acceptable one (RuntimeDefault or Localhost).
func checkSeccomp(where string, p *corev1.SeccompProfile, bad func(string, ...any)) bool {
	if p == nil {
		return false
	}
	switch p.Type {
	case corev1.SeccompProfileTypeRuntimeDefault, corev1.SeccompProfileTypeLocalhost:
		return true
	default:
		bad("%s: seccompProfile type %q not allowed (RuntimeDefault or Localhost)", where, p.Type)
		return false
	}
}

func checkSELinux(where string, o *corev1.SELinuxOptions, bad func(string, ...any)) {
	if o == nil {
		return
	}
	if !slices.Contains([]string{"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}, o.Type) {
		bad("%s: seLinuxOptions.type %q not allowed", where, o.Type)
	}
	if o.User != "" || o.Role != "" {
		bad("%s: seLinuxOptions user and role must be empty", where)
	}
}

var allowedVolumeKinds = []string{"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}

// safeSysctls is the baseline profile's allowed list (Kubernetes 1.33).
var safeSysctls = []string{
	"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
	"net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
	"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
	"net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
}

// volumeKind names the one source a volume uses, as the API spells it.
func volumeKind(s corev1.VolumeSource) string {
	switch {
	case s.ConfigMap != nil:
		return "configMap"
	case s.CSI != nil:
		return "csi"
	case s.DownwardAPI != nil:
		return "downwardAPI"
	case s.EmptyDir != nil:
		return "emptyDir"
	case s.Ephemeral != nil:
		return "ephemeral"
	case s.PersistentVolumeClaim != nil:
		return "persistentVolumeClaim"
	case s.Projected != nil:
		return "projected"
	case s.Secret != nil:
		return "secret"
	case s.HostPath != nil:
		return "hostPath"
	case s.NFS != nil:
		return "nfs"
	case s.ISCSI != nil:
		return "iscsi"
	case s.Image != nil:
		return "image"
	}
	return "other"
}
