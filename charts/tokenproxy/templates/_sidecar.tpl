{{/*
tokenproxy.sidecarContainer: the sidecar as one list item. With
sidecar.native (the default) it carries restartPolicy: Always and belongs in
the pod's initContainers (Kubernetes >= 1.29: ready before the app starts,
stopped after it); with sidecar.native=false it belongs in containers.
Context: (dict "Values" <tokenproxy values> "Release" .Release).
*/}}
{{- define "tokenproxy.sidecarContainer" -}}
{{- $v := .Values -}}
- name: {{ $v.sidecar.name }}
  image: {{ include "tokenproxy.image" . }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $v.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  env:
    {{- include "tokenproxy.env" . | trim | nindent 4 }}
  ports:
    - name: tp-metrics
      containerPort: {{ include "tokenproxy.str" $v.config.opsPort }}
      protocol: TCP
  startupProbe:
    {{- include "tokenproxy.probe" $v.sidecar.startupProbe | nindent 4 }}
  livenessProbe:
    {{- include "tokenproxy.probe" $v.sidecar.livenessProbe | nindent 4 }}
  readinessProbe:
    {{- include "tokenproxy.probe" $v.sidecar.readinessProbe | nindent 4 }}
  resources:
    {{- toYaml $v.sidecar.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.sidecar.securityContext | nindent 4 }}
  volumeMounts:
    # The whole volume, never subPath: subPath files miss Secret updates.
    - name: tokenproxy-keys
      mountPath: {{ $v.secrets.mountPath }}
      readOnly: true
    {{- if or $v.redis.tls.caSecret $v.redis.tls.caConfigMap }}
    - name: tokenproxy-redis-ca
      mountPath: {{ $v.redis.tls.mountPath }}
      readOnly: true
    {{- end }}
{{- end -}}

{{/*
tokenproxy.volumes: the volumes the sidecar mounts, as list items for the
pod's volumes. Context as for tokenproxy.sidecarContainer.
*/}}
{{- define "tokenproxy.volumes" -}}
{{- $v := .Values -}}
- name: tokenproxy-keys
  secret:
    secretName: {{ include "tokenproxy.secretName" . }}
    # 0440: readable by the pod's fsGroup (podSecurityContext), not world.
    defaultMode: 288
{{- if $v.redis.tls.caSecret }}
- name: tokenproxy-redis-ca
  secret:
    secretName: {{ $v.redis.tls.caSecret }}
    defaultMode: 292
{{- else if $v.redis.tls.caConfigMap }}
- name: tokenproxy-redis-ca
  configMap:
    name: {{ $v.redis.tls.caConfigMap }}
    defaultMode: 292
{{- end }}
{{- end -}}
