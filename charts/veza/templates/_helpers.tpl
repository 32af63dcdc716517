{{- define "veza.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "veza.labels" -}}
app.kubernetes.io/name: veza
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "veza.serviceAccountName" -}}
{{ default (include "veza.fullname" .) .Values.serviceAccount.name }}
{{- end -}}

{{- define "veza.selectorLabels" -}}
app.kubernetes.io/name: veza
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "veza.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Labels selecting the worker pods the operator creates (operator/veza_operator/naming.py). */}}
{{- define "veza.workerSelector" -}}
matchLabels:
  app.kubernetes.io/name: veza
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: [api, chat, stream]
  - key: veza.io/platform
    operator: Exists
{{- end -}}
