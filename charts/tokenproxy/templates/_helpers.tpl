{{/*
Helpers. The templates an app's chart may include (tokenproxy.sidecarContainer,
tokenproxy.volumes, tokenproxy.podLabels, tokenproxy.podSecurityContext) take a
context with .Values (this chart's values; from a parent chart:
.Values.tokenproxy, which Helm has merged with these defaults) and .Release,
and use nothing else (no .Chart, no .Capabilities), so they work from any chart:
  include "tokenproxy.sidecarContainer" (dict "Values" .Values.tokenproxy "Release" .Release)
*/}}

{{- define "tokenproxy.name" -}}
{{- default "tokenproxy" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tokenproxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "tokenproxy.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of what this chart creates (its own templates only: uses .Chart). */}}
{{- define "tokenproxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tokenproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels of every pod that carries this release's sidecar: the monitors,
the metrics Service, the PDB and the NetworkPolicy select them. */}}
{{- define "tokenproxy.podLabels" -}}
{{- $labels := merge (dict "tokenproxy.io/instance" (include "tokenproxy.fullname" .)) .Values.podLabels -}}
{{ toYaml $labels }}
{{- end -}}

{{- define "tokenproxy.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "tokenproxy.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "tokenproxy.secretName" -}}
{{- default (printf "%s-keys" (include "tokenproxy.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* A value as the environment wants it: whole numbers without an exponent,
lists joined with commas. */}}
{{- define "tokenproxy.str" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{ int64 . }}
{{- else if kindIs "slice" . -}}
{{ join "," . }}
{{- else if kindIs "invalid" . -}}
{{- else -}}
{{ toString . }}
{{- end -}}
{{- end -}}

{{/* The key files in use, as a YAML list of {env, key}: which *_FILE
setting points at which file of the Secret. */}}
{{- define "tokenproxy.keyFiles" -}}
{{- $s := .Values.secrets -}}
{{- $settings := list
  (list "privateKey" "TOKENPROXY_PRIVATE_KEY_FILE" "private-key.pem" true)
  (list "keyVersion" "TOKENPROXY_KEY_VERSION_FILE" "key-version" true)
  (list "walletPublicKey" "TOKENPROXY_WALLET_PUBLIC_KEY_FILE" "wallet-public-key.pem" false)
  (list "encryptionKeys" "TOKENPROXY_ENCRYPTION_KEYS_FILE" "encryption-keys" false)
  (list "appSigningKey" "TOKENPROXY_APP_SIGNING_KEY_FILE" "app-signing-key.pem" false)
  (list "eventsSecret" "TOKENPROXY_EVENTS_SECRET_FILE" "events-secret" false) -}}
{{- range $settings }}
{{- $field := index . 0 }}{{ $env := index . 1 }}{{ $file := index . 2 }}{{ $required := index . 3 }}
{{- if $s.existingSecret }}
{{- $key := index $s.existingSecretKeys $field }}
{{- if and $required (not $key) }}{{ fail (printf "secrets.existingSecretKeys.%s must name a key of the Secret" $field) }}{{ end }}
{{- if $key }}
- env: {{ $env }}
  key: {{ $key | quote }}
{{- end }}
{{- else if or $required (index $s.values $field) }}
- env: {{ $env }}
  key: {{ $file | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "tokenproxy.probe" -}}
httpGet:
  path: {{ .path }}
  port: tp-metrics
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end -}}

{{/* The sidecar's environment: one variable per non-empty setting. */}}
{{- define "tokenproxy.env" -}}
{{- $v := .Values -}}
{{- $c := $v.config -}}
{{- $r := $v.redis -}}
{{- $plain := list
  (list "TOKENPROXY_LISTEN_ADDR" $c.listenAddr)
  (list "TOKENPROXY_OPS_ADDR" (printf ":%s" (include "tokenproxy.str" $c.opsPort)))
  (list "TOKENPROXY_WALLET_URL" $c.walletURL)
  (list "TOKENPROXY_CLIENT_ID" $c.clientId)
  (list "TOKENPROXY_REDIS_URL" $r.url)
  (list "TOKENPROXY_REDIS_ADDRS" $r.addrs)
  (list "TOKENPROXY_REDIS_MASTER_NAME" $r.masterName)
  (list "TOKENPROXY_REDIS_USERNAME" $r.username)
  (list "TOKENPROXY_REDIS_WAIT_REPLICAS" $r.waitReplicas)
  (list "TOKENPROXY_KEY_PREFIX" $c.keyPrefix)
  (list "TOKENPROXY_REFRESH_BEFORE" $c.refreshBefore)
  (list "TOKENPROXY_REFRESH_JITTER" $c.refreshJitter)
  (list "TOKENPROXY_REFRESH_RATE" $c.refreshRate)
  (list "TOKENPROXY_REFRESH_LEASE" $c.refreshLease)
  (list "TOKENPROXY_REFRESH_IDLE_AFTER" $c.refreshIdleAfter)
  (list "TOKENPROXY_CUSTOMER_HEADER" $c.customerHeader)
  (list "TOKENPROXY_INJECT" $c.inject)
  (list "TOKENPROXY_TOKEN_PATHS" $c.tokenPaths)
  (list "TOKENPROXY_MAX_BODY_BYTES" $c.maxBodyBytes)
  (list "TOKENPROXY_MAX_RESPONSE_BYTES" $c.maxResponseBytes)
  (list "TOKENPROXY_UPSTREAM_TIMEOUT" $c.upstreamTimeout)
  (list "TOKENPROXY_CACHE_MAX_ENTRIES" $c.cacheMaxEntries)
  (list "TOKENPROXY_SHUTDOWN_TIMEOUT" $c.shutdownTimeout)
  (list "TOKENPROXY_LOG_LEVEL" $c.logLevel)
  (list "TOKENPROXY_LOG_FORMAT" $c.logFormat)
  (list "TOKENPROXY_MAX_INFLIGHT" $c.maxInflight)
  (list "TOKENPROXY_MEMORY_LIMIT" $c.memoryLimit)
  (list "TOKENPROXY_EVENTS_URL" $c.eventsURL)
  (list "TOKENPROXY_EVENTS_EXPIRY_HORIZON" $c.eventsExpiryHorizon)
  (list "TOKENPROXY_APP_TOKENS" $c.appTokens) -}}
{{- range $plain }}
{{- $val := include "tokenproxy.str" (index . 1) }}
{{- if ne $val "" }}
- name: {{ index . 0 }}
  value: {{ $val | quote }}
{{- end }}
{{- end }}
{{- if and (not $c.memoryLimit) $v.sidecar.resources.limits.memory }}
# The container's memory limit in bytes (downward API).
- name: TOKENPROXY_MEMORY_LIMIT
  valueFrom:
    resourceFieldRef:
      containerName: {{ $v.sidecar.name }}
      resource: limits.memory
{{- end }}
{{- range (include "tokenproxy.keyFiles" . | fromYamlArray) }}
- name: {{ .env }}
  value: {{ printf "%s/%s" $v.secrets.mountPath .key | quote }}
{{- end }}
{{- if $r.auth.existingSecret }}
- name: TOKENPROXY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.auth.existingSecret }}
      key: {{ $r.auth.passwordKey }}
{{- end }}
{{- if or $r.tls.caSecret $r.tls.caConfigMap }}
- name: TOKENPROXY_REDIS_CA_FILE
  value: {{ printf "%s/%s" $r.tls.mountPath $r.tls.caKey | quote }}
{{- end }}
{{- with $v.sidecar.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
