package validate

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestManifestsDecodeStrictly decodes every document of every rendering
// (chart defaults, each ci values file, each kustomize overlay) into its
// API type, strictly, and checks each pod template against "restricted".
func TestManifestsDecodeStrictly(t *testing.T) {
	for _, r := range allRenderings(t) {
		t.Run(r.name, func(t *testing.T) {
			objs, err := DecodeAll(r.stream)
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) == 0 {
				t.Fatal("no documents")
			}
			pods := 0
			for _, o := range objs {
				tmpl, ok := PodTemplate(o)
				if !ok {
					continue
				}
				pods++
				for _, v := range Restricted(tmpl) {
					t.Errorf("%s %s: %s", o.Kind, o.Name, v)
				}
			}
			if pods == 0 && !strings.Contains(r.name, "example-off") {
				t.Errorf("no pod template rendered")
			}
		})
	}
}

// TestDecodeRefuses shows the decoder is strict: each document here must
// fail.
func TestDecodeRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field": `apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  clusterIp: None`,
		"unknown nested field": `apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - name: c
          image: i
          securityContext: {readOnlyRootFileSystem: true}`,
		"wrong type": `apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  ports: [{port: "http"}]`,
		"duplicate field": `apiVersion: v1
kind: ConfigMap
metadata: {name: c}
data: {a: "1"}
data: {b: "2"}`,
		"unknown kind": `apiVersion: v1
kind: Pod2
metadata: {name: p}`,
		"unknown monitoring field": `apiVersion: monitoring.coreos.com/v1
kind: PodMonitor
metadata: {name: p}
spec:
  selector: {}
  podMetricEndpoints: [{port: m}]`,
		"unknown rule field": `apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: r}
spec:
  groups:
    - name: g
      rules:
        - alert: A
          expr: up == 0
          fore: 5m`,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Decode([]byte(doc)); err == nil {
				t.Fatal("decoded without error")
			}
		})
	}
	// And a good one passes, so the failures above are about the fault.
	if _, err := Decode([]byte("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  clusterIP: None\n")); err != nil {
		t.Fatalf("a valid Service: %v", err)
	}
}

func TestSplitDocuments(t *testing.T) {
	docs := SplitDocuments([]byte("---\n# Source: a\n---\na: 1\n--- # c\nb: 2\n---\n"))
	if len(docs) != 2 || !strings.Contains(string(docs[0]), "a: 1") || !strings.Contains(string(docs[1]), "b: 2") {
		t.Fatalf("got %q", docs)
	}
}

var _ = corev1.Container{}
