{{/* The pod spec shared by the head and every worker group. */}}
{{- define "moeserve.rayPodSpec" -}}
{{- $ray := .root.Values.rayCluster -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
securityContext:
  {{- toYaml $ray.podSecurityContext | nindent 2 }}
containers:
  - name: {{ .name }}
    image: {{ .image }}
    imagePullPolicy: {{ $ray.image.pullPolicy }}
    env:
      - name: RAY_USAGE_STATS_ENABLED
        value: "0"
    resources:
      {{- toYaml .resources | nindent 6 }}
    securityContext:
      {{- toYaml $ray.securityContext | nindent 6 }}
    volumeMounts:
      - name: shm
        mountPath: /dev/shm
      {{- with $ray.volumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: shm
    emptyDir: {medium: Memory, sizeLimit: {{ $ray.shmSizeLimit }}}
  {{- with $ray.volumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* `ray start` flags as KubeRay takes them: a map of strings ({} when none). */}}
{{- define "moeserve.rayStartParams" -}}
{{- if . }}
{{- range $flag, $value := . }}
{{ $flag }}: {{ $value | toString | quote }}
{{- end }}
{{- else }}
{}
{{- end }}
{{- end }}
