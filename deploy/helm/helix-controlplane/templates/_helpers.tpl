{{/* The release's resource name: the release name, with the chart's unless it already holds it. */}}
{{- define "helix-controlplane.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "helix-controlplane.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "helix-controlplane.labels" -}}
{{ include "helix-controlplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The environment both the server and the migrations read: the two URLs from the Secret. */}}
{{- define "helix-controlplane.connectionEnv" -}}
{{- $secret := required "secret.name is required: a Secret holding DATABASE_URL and REDIS_URL" .Values.secret.name -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secret.databaseUrlKey }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .Values.secret.redisUrlKey }}
{{- end -}}

{{- define "helix-controlplane.filestoreIsPath" -}}
{{- if not (hasPrefix "s3://" .Values.filestore.url) }}true{{ end -}}
{{- end -}}
