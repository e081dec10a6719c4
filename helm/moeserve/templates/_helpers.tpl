{{/* Names, labels, and the mapping of `config`/`secrets` values onto MOESERVE_ variables. */}}

{{- define "moeserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moeserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "moeserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "moeserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "moeserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moeserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "moeserve.controlPlaneSelectorLabels" -}}
{{ include "moeserve.selectorLabels" . }}
app.kubernetes.io/component: control-plane
{{- end }}

{{- define "moeserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "moeserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "moeserve.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) }}
{{- end }}

{{- define "moeserve.rayClusterName" -}}
{{- printf "%s-ray" (include "moeserve.fullname" . | trunc 40 | trimSuffix "-") }}
{{- end }}

{{/* The Secret whose keys are MOESERVE_ names: the chart's, or secrets.existingSecret. */}}
{{- define "moeserve.settingsSecretName" -}}
{{- default (printf "%s-settings" (include "moeserve.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* The GCS address the control plane attaches to. */}}
{{- define "moeserve.rayAddress" -}}
{{- if .Values.config.ray_address }}
{{- .Values.config.ray_address }}
{{- else if .Values.rayCluster.enabled }}
{{- printf "%s-head-svc.%s.svc:6379" (include "moeserve.rayClusterName" .) .Release.Namespace }}
{{- else }}
{{- fail "config.ray_address is required when rayCluster.enabled is false" }}
{{- end }}
{{- end }}

{{/*
One `MOESERVE_<PATH>: "<value>"` line per set leaf of a settings tree, nested keys joined
with "__" (pydantic-settings' env_nested_delimiter). null and "" are left out (the
application's default applies); strings are passed as they are, everything else as JSON
(numbers stay exact, e.g. 4194304 rather than 4.194304e+06; lists and objects are what
pydantic-settings parses).
Call: include "moeserve.settingsEnv" (dict "prefix" "MOESERVE_" "values" .Values.config)
*/}}
{{- define "moeserve.settingsEnv" -}}
{{- $prefix := .prefix }}
{{- /* Settings that are one JSON object (a cloud's section, the system models), not nested settings. */}}
{{- $json := list "MOESERVE_CLOUDS__AWS" "MOESERVE_CLOUDS__GCP" "MOESERVE_CLOUDS__AZURE" "MOESERVE_SYSTEM_MODELS" }}
{{- range $key, $value := .values }}
{{- $name := printf "%s%s" $prefix (upper $key) }}
{{- if and (kindIs "map" $value) (not (has $name $json)) }}
{{- include "moeserve.settingsEnv" (dict "prefix" (printf "%s__" $name) "values" $value) }}
{{- else if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{ $name }}: {{ ternary $value (toJson $value) (kindIs "string" $value) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: given, or preStop sleep + drain + 15 s to flush and leave. */}}
{{- define "moeserve.terminationGrace" -}}
{{- $cp := .Values.controlPlane }}
{{- $drain := add (int $cp.preStopSleepSeconds) (int .Values.config.shutdown_grace_s) }}
{{- if kindIs "invalid" $cp.terminationGracePeriodSeconds }}
{{- add $drain 15 }}
{{- else if le (int $cp.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "controlPlane.terminationGracePeriodSeconds (%v) must exceed controlPlane.preStopSleepSeconds + config.shutdown_grace_s (%d): Kubernetes would kill requests still draining" $cp.terminationGracePeriodSeconds $drain) }}
{{- else }}
{{- int $cp.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Guards against values that render but cannot work. */}}
{{- define "moeserve.validate" -}}
{{- if not (or .Values.postgresql.url .Values.postgresql.existingSecret.name) }}
{{- fail "an external PostgreSQL is required: set postgresql.existingSecret.name (or postgresql.url); SQLite in a pod's emptyDir would lose every endpoint, token and usage row on restart" }}
{{- end }}
{{- if and (gt (int .Values.controlPlane.replicas) 1) (not (or .Values.redis.url .Values.redis.existingSecret.name)) }}
{{- fail "controlPlane.replicas > 1 needs Redis for shared rate-limit counters: set redis.existingSecret.name (or redis.url), or controlPlane.replicas: 1" }}
{{- end }}
{{- if kindIs "invalid" .Values.config.shutdown_grace_s }}
{{- fail "config.shutdown_grace_s must be set: the pod's termination grace period is derived from it" }}
{{- end }}
{{- end }}
