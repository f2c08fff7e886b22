// Package validate checks tokenproxy's Kubernetes manifests (the Helm chart in
// charts/tokenproxy and the kustomize overlays in deploy/kubernetes) against
// the real API types: every document must decode strictly into the
// k8s.io/api or Prometheus Operator monitoring/v1 type of its kind, and every
// pod template must meet the Pod Security "restricted" profile. It is a
// module of its own so that k8s.io and Helm never enter the sidecar's
// dependency graph; its tests render the manifests with helm and kubectl.
package validate

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Object is one decoded manifest: its kind, name and the typed value
// (a pointer to the k8s.io/api or monitoring/v1 struct).
type Object struct {
	APIVersion string
	Kind       string
	Name       string
	Value      any
}

// newObject maps apiVersion/kind to a fresh value of its type. A kind that is
// not here is an error: a manifest the tests cannot check is not shipped.
var newObject = map[string]func() any{
	"v1/ConfigMap":                            func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                               func() any { return &corev1.Secret{} },
	"v1/Service":                              func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                       func() any { return &corev1.ServiceAccount{} },
	"apps/v1/Deployment":                      func() any { return &appsv1.Deployment{} },
	"apps/v1/StatefulSet":                     func() any { return &appsv1.StatefulSet{} },
	"apps/v1/DaemonSet":                       func() any { return &appsv1.DaemonSet{} },
	"policy/v1/PodDisruptionBudget":           func() any { return &policyv1.PodDisruptionBudget{} },
	"networking.k8s.io/v1/NetworkPolicy":      func() any { return &networkingv1.NetworkPolicy{} },
	"monitoring.coreos.com/v1/PodMonitor":     func() any { return &monitoringv1.PodMonitor{} },
	"monitoring.coreos.com/v1/ServiceMonitor": func() any { return &monitoringv1.ServiceMonitor{} },
	"monitoring.coreos.com/v1/PrometheusRule": func() any { return &monitoringv1.PrometheusRule{} },
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// SplitDocuments splits a multi-document YAML stream (helm template or
// kubectl kustomize output) into its documents, dropping empty ones and
// those holding only comments.
func SplitDocuments(stream []byte) [][]byte {
	var docs [][]byte
	for _, d := range docSeparator.Split(string(stream), -1) {
		if !hasContent(d) {
			continue
		}
		docs = append(docs, []byte(d))
	}
	return docs
}

func hasContent(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		l := strings.TrimSpace(line)
		if l != "" && !strings.HasPrefix(l, "#") {
			return true
		}
	}
	return false
}

// Decode decodes one document strictly into the type of its kind: an unknown
// or duplicated field, a value of the wrong type, or an unknown kind is an
// error.
func Decode(doc []byte) (Object, error) {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return Object{}, fmt.Errorf("read apiVersion and kind: %w", err)
	}
	mk, ok := newObject[head.APIVersion+"/"+head.Kind]
	if !ok {
		return Object{}, fmt.Errorf("unknown kind %s %s (%q): add its type to validate.newObject", head.APIVersion, head.Kind, head.Metadata.Name)
	}
	v := mk()
	if err := yaml.UnmarshalStrict(doc, v); err != nil {
		return Object{}, fmt.Errorf("%s %q: %w", head.Kind, head.Metadata.Name, err)
	}
	// yaml.UnmarshalStrict decodes with encoding/json, which matches field
	// names regardless of case (clusterIp would pass for clusterIP); the API
	// server does not. Decode the same JSON again as it does: case-sensitive,
	// no unknown or duplicate fields.
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return Object{}, fmt.Errorf("%s %q: %w", head.Kind, head.Metadata.Name, err)
	}
	strict, err := kjson.UnmarshalStrict(j, mk())
	if err == nil && len(strict) > 0 {
		err = errors.Join(strict...)
	}
	if err != nil {
		return Object{}, fmt.Errorf("%s %q: %w", head.Kind, head.Metadata.Name, err)
	}
	return Object{APIVersion: head.APIVersion, Kind: head.Kind, Name: head.Metadata.Name, Value: v}, nil
}

// DecodeAll splits a stream and decodes every document.
func DecodeAll(stream []byte) ([]Object, error) {
	var objs []Object
	var errs []string
	for i, d := range SplitDocuments(bytes.TrimSpace(stream)) {
		o, err := Decode(d)
		if err != nil {
			errs = append(errs, fmt.Sprintf("document %d: %v", i+1, err))
			continue
		}
		objs = append(objs, o)
	}
	if len(errs) > 0 {
		return objs, fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return objs, nil
}

// PodTemplate returns the pod template of a workload object, if it has one.
func PodTemplate(o Object) (*corev1.PodTemplateSpec, bool) {
	switch v := o.Value.(type) {
	case *appsv1.Deployment:
		return &v.Spec.Template, true
	case *appsv1.StatefulSet:
		return &v.Spec.Template, true
	case *appsv1.DaemonSet:
		return &v.Spec.Template, true
	}
	return nil, false
}
