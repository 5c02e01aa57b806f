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

{{/* Whether the proxies' HorizontalPodAutoscaler (autoscaling/v2, served from Kubernetes 1.23)
and PodDisruptionBudget (policy/v1, from 1.21) are rendered: when enabled and the cluster serves
the API. Against a cluster, Capabilities.APIVersions is what it serves; `helm template` reports a
built-in list whatever --kube-version says, hence the version check too (--api-versions adds to
the list, it does not replace it). "true" or empty. */}}
{{- define "gp.proxyHpa" -}}
{{- if and .Values.proxy.autoscaling.enabled (.Capabilities.APIVersions.Has "autoscaling/v2") (semverCompare ">=1.23.0-0" .Capabilities.KubeVersion.Version) -}}
true
{{- end -}}
{{- end -}}

{{- define "gp.proxyPdb" -}}
{{- $served := or (.Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget") (.Capabilities.APIVersions.Has "policy/v1") -}}
{{- if and .Values.proxy.podDisruptionBudget.enabled $served (semverCompare ">=1.21.0-0" .Capabilities.KubeVersion.Version) -}}
true
{{- end -}}
{{- end -}}

{{/* A whole number from values as plain decimal digits. Numbers in values files reach the
templates as float64, which prints in e-notation from 1e6 on ("3.3554432e+07"). */}}
{{- define "gp.int" -}}
{{- printf "%d" (int64 .) -}}
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

{{- define "gp.redisAuthSecret" -}}
{{- .Values.redis.bundled.auth.existingSecret | default (printf "%s-redis-auth" (include "gp.fullname" .)) -}}
{{- end -}}

{{/* The bundled Redis's ACL users, one line each (the key prefix is checked first, since it
goes into glob patterns). Expects the shell variables OP_HASH, PROXY_HASH (SHA-256 hex of the
passwords) and DEFAULT_HASH (of a random password made at each start, known to nobody) where it
is used. The proxy reads group snapshots (`{g:NAME}:group`) and the group index
(`{index}:groups`) and writes nothing else than its own state.
`default` is on, with every right: Redis replays its AOF at start as the `default` user, and EXEC
re-checks the ACL for the queued commands (redis/redis#14541, in Redis 7 and Valkey), so with
`default` off or restricted every MULTI/EXEC of the AOF (the store's scripts are written there as
one) would be refused and its writes lost at each restart. The replay must take whatever the
other users wrote, under any earlier key prefix or ACL too: hence all keys, channels and
commands. Nobody can log in as `default` all the same: a new connection is not authenticated as
a user with a password, and its password is thrown away once hashed. */}}
{{- define "gp.redisAcl" -}}
{{- $p := .Values.redis.keyPrefix -}}
{{- if not (regexMatch "^[A-Za-z0-9:_.-]*$" $p) -}}
{{- fail (printf `redis.keyPrefix %q: with the bundled Redis it may hold only letters, digits and ":_.-" (it goes into the ACL's key patterns)` $p) -}}
{{- end -}}
{{- $cmds := "+@all -@dangerous -function -script|flush -script|kill -script|debug" -}}
user default reset on #${DEFAULT_HASH} ~* &* +@all
user operator reset on #${OP_HASH} ~{{ $p }}* &{{ $p }}* {{ $cmds }}
user proxy reset on #${PROXY_HASH} %R~{{ $p }}{g:*}:group %R~{{ $p }}{index}:groups ~{{ $p }}{g:*}:keys ~{{ $p }}{g:*}:health ~{{ $p }}{g:*}:usage:m:* ~{{ $p }}{g:*}:usage:d:* ~{{ $p }}{g:*}:rate:s:* ~{{ $p }}{g:*}:rate:d:* ~{{ $p }}{g:*}:audit ~{{ $p }}aff:* ~{{ $p }}{index}:proxies &{{ $p }}events {{ $cmds }}
{{- end -}}

{{/* The store's environment. Pass (dict "ctx" . "user" "operator"|"proxy"): with the bundled
Redis, that ACL user and its password; with an external one, redis.external's credentials
(the proxies' own, redis.external.proxy, when set). */}}
{{- define "gp.storeEnv" -}}
{{- $ctx := .ctx -}}
{{- $r := $ctx.Values.redis -}}
{{- if $r.bundled.enabled }}
- name: GEMINI_PROXY_REDIS_URL
  value: {{ printf "redis://%s-redis:6379" (include "gp.fullname" $ctx) | quote }}
- name: GEMINI_PROXY_REDIS_USERNAME
  value: {{ .user | quote }}
- name: GEMINI_PROXY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "gp.redisAuthSecret" $ctx }}
      key: {{ printf "%s-password" .user }}
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
{{- if not $r.bundled.enabled }}
{{- $username := $r.external.username -}}
{{- $password := $r.external.passwordSecret -}}
{{- if eq .user "proxy" -}}
{{- $username = $r.external.proxy.username | default $username -}}
{{- if $r.external.proxy.passwordSecret.name -}}
{{- $password = $r.external.proxy.passwordSecret -}}
{{- end -}}
{{- end }}
{{- if $username }}
- name: GEMINI_PROXY_REDIS_USERNAME
  value: {{ $username | quote }}
{{- end }}
{{- if $password.name }}
- name: GEMINI_PROXY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $password.name }}
      key: {{ $password.key }}
{{- end }}
{{- end }}
- name: GEMINI_PROXY_REDIS_KEY_PREFIX
  value: {{ $r.keyPrefix | quote }}
- name: GEMINI_PROXY_STATE_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "gp.stateKeySecret" $ctx }}
      key: key
{{- end -}}

{{/* NetworkPolicy egress rules for the proxies and the operator alike: DNS and the store. */}}
{{- define "gp.np.egressCommon" -}}
{{- $np := .Values.networkPolicy -}}
# DNS, wherever the resolver is (a node-local cache included).
- ports:
    {{- range $np.dnsPorts }}
    - {port: {{ int64 . }}, protocol: UDP}
    - {port: {{ int64 . }}, protocol: TCP}
    {{- end }}
{{- if .Values.redis.bundled.enabled }}
# The bundled Redis.
- to:
    - podSelector:
        matchLabels:
          {{- include "gp.selector" (dict "ctx" . "component" "redis") | nindent 10 }}
  ports:
    - {port: 6379, protocol: TCP}
{{- else }}
{{- /* The configured ports, and those of the URLs (6379 when a URL names none). */ -}}
{{- $ext := .Values.redis.external -}}
{{- $ports := list -}}
{{- range $np.externalRedisPorts }}
{{- $ports = append $ports (int64 .) -}}
{{- end }}
{{- range concat (compact (list $ext.url)) $ext.sentinel.urls $ext.cluster.urls }}
{{- $port := regexFind ":[0-9]+$" (urlParse .).host | trimPrefix ":" | default "6379" -}}
{{- $ports = append $ports (int64 $port) -}}
{{- end }}
# The external Redis (its Sentinels or Cluster nodes too).
- to:
    {{- range $np.externalRedisCidrs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  ports:
    {{- range $ports | uniq }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- end -}}

{{/* Who may scrape (networkPolicy.metrics), as a NetworkPolicyPeer list. */}}
{{- define "gp.np.metricsPeer" -}}
{{- with .Values.networkPolicy.metrics.namespaceSelector }}
- namespaceSelector:
    {{- toYaml . | nindent 4 }}
{{- else }}
- namespaceSelector: {}
{{- end }}
  {{- with .Values.networkPolicy.metrics.podSelector }}
  podSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
