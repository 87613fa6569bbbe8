{{/* Name of the release's objects. */}}
{{- define "aver.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object, except the selector labels. */}}
{{- define "aver.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: aver
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "aver.labels" -}}
{{ include "aver.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aver.selectorLabels" -}}
app.kubernetes.io/name: aver-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aver.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from {repository, digest, tag}: REPOSITORY@DIGEST when a
digest is set (it wins over the tag), else REPOSITORY:TAG (TAG defaulting to
the chart's appVersion). A string is taken as the whole reference.
Called with (list NAME IMAGE CONTEXT).
*/}}
{{- define "aver.imageRef" -}}
{{- $name := index . 0 -}}
{{- $image := index . 1 -}}
{{- $ctx := index . 2 -}}
{{- if kindIs "string" $image -}}
{{- required (printf "%s is required" $name) $image -}}
{{- else -}}
{{- $repository := required (printf "%s.repository is required" $name) $image.repository -}}
{{- if $image.digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" $image.digest) -}}
{{- fail (printf "%s.digest must be sha256: and 64 lowercase hex digits, not %q" $name $image.digest) -}}
{{- end -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default $ctx.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aver.image" -}}
{{- include "aver.imageRef" (list "controller.image" .Values.controller.image .) -}}
{{- end -}}

{{- define "aver.enclaveImage" -}}
{{- include "aver.imageRef" (list "enclave.image" .Values.enclave.image .) -}}
{{- end -}}
