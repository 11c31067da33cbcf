{{/* Object names: the release name, then the component. */}}
{{- define "seckill.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Labels of a component. app.kubernetes.io/name is the component's own name
(seckill-gateway, seckill-service, ...): Prometheus takes the job name from
it and the alert rules select those jobs.
*/}}
{{- define "seckill.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "seckill.labels" -}}
{{ include "seckill.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: seckill
app.kubernetes.io/version: {{ .root.Values.image.tag | default .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "seckill.image" -}}
{{- printf "%s%s:%s" .root.Values.image.registry .image.repository (.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* The Secret with the tokens and the Redis password or URL. */}}
{{- define "seckill.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "seckill.fullname" .)) -}}
{{- end -}}

{{- define "seckill.redisName" -}}
{{- printf "%s-redis" (include "seckill.fullname" .) -}}
{{- end -}}

{{/*
SECKILL_REDIS_URL, for gateways, services and the relay: an external URL
from the Secret, or the in-chart Redis's first pod with the password from
the Secret (REDIS_PASSWORD, defined just before).
*/}}
{{- define "seckill.redisEnv" -}}
{{- if .Values.redis.external.url }}
- name: SECKILL_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "seckill.secretName" . }}
      key: redis-url
{{- else }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "seckill.secretName" . }}
      key: redis-password
- name: SECKILL_REDIS_URL
  value: redis://:$(REDIS_PASSWORD)@{{ include "seckill.redisName" . }}-0.{{ include "seckill.redisName" . }}:6379
{{- end }}
{{- end -}}

{{/* The callback token as a file: in no environment listing of the pod. */}}
{{- define "seckill.callbackTokenVolume" -}}
- name: callback-token
  secret:
    secretName: {{ include "seckill.secretName" . }}
    defaultMode: 288 # 0440: the owner and the pod's group read it
    items:
      - key: callback-token
        path: token
{{- end -}}

{{- define "seckill.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "seckill.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Extra SECKILL_* variables from a map, in a stable order. */}}
{{- define "seckill.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{/* prometheus.io/* annotations of a pod, when asked for. */}}
{{- define "seckill.scrapeAnnotations" -}}
{{- if .root.Values.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}
