{{- define "gp.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gp.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gemini-proxy
{{- end -}}

{{/* selector labels: pass (dict "ctx" . "component" "proxy") */}}
{{- define "gp.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gp.image" -}}
{{- $tag := .ctx.Values.image.tag | default .ctx.Chart.AppVersion -}}
{{- printf "%s/%s/%s:%s" .ctx.Values.image.registry .ctx.Values.image.repository .name $tag -}}
{{- end -}}

{{- define "gp.stateKeySecret" -}}
{{- .Values.stateKey.existingSecret | default (printf "%s-state-key" (include "gp.fullname" .)) -}}
{{- end -}}

{{- define "gp.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "gp.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The store's environment, the same for operator and proxy. */}}
{{- define "gp.storeEnv" -}}
{{- $r := .Values.redis -}}
{{- if $r.bundled.enabled }}
- name: GEMINI_PROXY_REDIS_URL
  value: {{ printf "redis://%s-redis:6379" (include "gp.fullname" .) | quote }}
{{- else if $r.external.url }}
- name: GEMINI_PROXY_REDIS_URL
  value: {{ $r.external.url | quote }}
{{- else if $r.external.sentinel.master }}
- name: GEMINI_PROXY_REDIS_SENTINEL_MASTER
  value: {{ $r.external.sentinel.master | quote }}
- name: GEMINI_PROXY_REDIS_SENTINEL_URLS
  value: {{ join "," $r.external.sentinel.urls | quote }}
{{- else if $r.external.cluster.urls }}
- name: GEMINI_PROXY_REDIS_CLUSTER_URLS
  value: {{ join "," $r.external.cluster.urls | quote }}
{{- else }}
{{- fail "redis: enable redis.bundled, or set redis.external.url, .sentinel or .cluster" }}
{{- end }}
{{- if and (not $r.bundled.enabled) $r.external.username }}
- name: GEMINI_PROXY_REDIS_USERNAME
  value: {{ $r.external.username | quote }}
{{- end }}
{{- if and (not $r.bundled.enabled) $r.external.passwordSecret.name }}
- name: GEMINI_PROXY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $r.external.passwordSecret.name }}
      key: {{ $r.external.passwordSecret.key }}
{{- end }}
- name: GEMINI_PROXY_REDIS_KEY_PREFIX
  value: {{ $r.keyPrefix | quote }}
- name: GEMINI_PROXY_STATE_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "gp.stateKeySecret" . }}
      key: key
{{- end -}}
