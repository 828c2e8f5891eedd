{{/* Names: <release>-workbench unless the release name already contains "workbench". */}}
{{- define "workbench.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "workbench.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object; call with (dict "root" $ "component" "jupyter"). */}}
{{- define "workbench.labels" -}}
{{ include "workbench.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "workbench.componentSelector" -}}
{{ include "workbench.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference; call with (dict "root" $ "key" "trainerTensorflow" "name" "trainer-tensorflow"). */}}
{{- define "workbench.image" -}}
{{- $override := index .root.Values.images .key -}}
{{- if $override -}}{{ $override }}{{- else -}}
{{- printf "%s/%s:%s" .root.Values.image.prefix .name (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "workbench.claimName" -}}
{{- .Values.storage.workspace.existingClaim | default (printf "%s-workspace" (include "workbench.fullname" .)) -}}
{{- end -}}

{{- define "workbench.jupyterSecret" -}}
{{- .Values.jupyter.existingSecret | default (printf "%s-jupyter" (include "workbench.fullname" .)) -}}
{{- end -}}

{{- define "workbench.s3Secret" -}}
{{- .Values.storage.minio.existingSecret | default (printf "%s-minio" (include "workbench.fullname" .)) -}}
{{- end -}}

{{/* The S3 keys pods get: with bundled MinIO a user scoped to the bucket (the hook Job creates it), never
the root keys, which only MinIO and that Job see; with an external endpoint, existingSecret's keys. */}}
{{- define "workbench.s3UserSecret" -}}
{{- if .Values.storage.minio.bundled -}}
{{- .Values.storage.minio.userSecret | default (printf "%s-minio-user" (include "workbench.fullname" .)) -}}
{{- else -}}
{{- include "workbench.s3Secret" . -}}
{{- end -}}
{{- end -}}

{{- define "workbench.servingSecret" -}}
{{- .Values.serving.auth.existingSecret | default (printf "%s-serving" (include "workbench.fullname" .)) -}}
{{- end -}}

{{/* WORKBENCH_SERVER_TOKEN (the model server's bearer token) for a container, when serving.auth is on. */}}
{{- define "workbench.servingTokenEnv" -}}
{{- if and .Values.serving.enabled .Values.serving.auth.enabled }}
- name: WORKBENCH_SERVER_TOKEN
  valueFrom: {secretKeyRef: {name: {{ include "workbench.servingSecret" . }}, key: token}}
{{- end }}
{{- end -}}

{{- define "workbench.minio" -}}
{{- and (eq .Values.storage.type "minio") .Values.storage.minio.bundled -}}
{{- end -}}

{{- define "workbench.s3Endpoint" -}}
{{- if .Values.storage.minio.bundled -}}
{{- printf "http://%s-minio:9000" (include "workbench.fullname" .) -}}
{{- else -}}
{{- .Values.storage.minio.endpoint -}}
{{- end -}}
{{- end -}}

{{/* The workspace in MinIO mode: the bucket (and prefix) as a URL. */}}
{{- define "workbench.workspaceUrl" -}}
{{- printf "s3://%s/%s" .Values.storage.minio.bucket .Values.storage.minio.prefix | trimSuffix "/" -}}
{{- end -}}

{{/* "true" when pods mount the workspace PVC: always with storage.type=pvc; with minio only when
storage.workspace.enabled (Jupyter's notebooks; TF Serving's models). */}}
{{- define "workbench.pvc" -}}
{{- or (eq .Values.storage.type "pvc") .Values.storage.workspace.enabled -}}
{{- end -}}

{{/* Where a pod keeps its local copy of a bucket workspace (an emptyDir named "cache"). */}}
{{- define "workbench.cacheDir" -}}/var/cache/workbench{{- end -}}

{{/* WORKBENCH_WORKSPACE for a container: the volume's path, or in MinIO mode the bucket's URL plus the local
cache folder (WORKBENCH_CACHE_DIR); call with (dict "root" $ "cache" PATH), PATH "" for the emptyDir. */}}
{{- define "workbench.workspaceEnv" -}}
{{- with .root }}
{{- if eq .Values.storage.type "minio" }}
- name: WORKBENCH_WORKSPACE
  value: {{ include "workbench.workspaceUrl" . | quote }}
- name: WORKBENCH_CACHE_DIR
  value: {{ $.cache | default (include "workbench.cacheDir" .) | quote }}
{{- else }}
- name: WORKBENCH_WORKSPACE
  value: {{ .Values.storage.workspace.mountPath | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* TensorBoard's logdir: the workspace's runs/ on the volume, or in the bucket. */}}
{{- define "workbench.logdir" -}}
{{- if eq .Values.storage.type "minio" -}}
{{- printf "s3://%s/%sruns" .Values.storage.minio.bucket .Values.storage.minio.prefix -}}
{{- else -}}
{{- printf "%s/runs" .Values.storage.workspace.mountPath -}}
{{- end -}}
{{- end -}}

{{/* S3 settings for a container (MinIO mode): what TensorBoard (S3_ENDPOINT), boto3 and s3fs read; the keys of
the bucket-scoped user. */}}
{{- define "workbench.s3Env" -}}
{{- include "workbench.s3EnvWith" (dict "root" . "secret" (include "workbench.s3UserSecret" .)) }}
{{- end -}}

{{/* The same with the keys of Secret "secret": call with (dict "root" $ "secret" NAME). */}}
{{- define "workbench.s3EnvWith" -}}
{{- $secret := .secret }}
{{- with .root }}
{{- if eq .Values.storage.type "minio" }}
{{- $endpoint := include "workbench.s3Endpoint" . }}
- name: S3_ENDPOINT
  value: {{ $endpoint | quote }}
- name: AWS_ENDPOINT_URL
  value: {{ $endpoint | quote }}
- name: AWS_REGION
  value: {{ .Values.storage.minio.region | quote }}
- name: S3_USE_HTTPS
  value: {{ ternary "1" "0" (hasPrefix "https://" $endpoint) | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: AWS_ACCESS_KEY_ID}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: AWS_SECRET_ACCESS_KEY}}
{{- end }}
{{- end }}
{{- end -}}

{{/* The prediction log's PostgreSQL: a Secret named by the user (key url), or the bundled server's. */}}
{{- define "workbench.logDb" -}}
{{- $pg := .Values.predictionLog.postgresql -}}
{{- if $pg.existingSecret -}}{{ $pg.existingSecret }}{{- else if $pg.bundled -}}{{ printf "%s-postgresql" (include "workbench.fullname" .) }}{{- end -}}
{{- end -}}

{{/* WORKBENCH_SERVE_LOG_DB for a container, when the prediction log goes to PostgreSQL (else: the workspace's SQLite). */}}
{{- define "workbench.logDbEnv" -}}
{{- with include "workbench.logDb" . -}}
- name: WORKBENCH_SERVE_LOG_DB
  valueFrom: {secretKeyRef: {name: {{ . }}, key: url}}
{{- end }}
{{- end -}}

{{/* requests/limits plus nvidia.com/gpu; call with (dict "resources" ... "gpus" N). */}}
{{- define "workbench.resources" -}}
{{- $r := deepCopy (.resources | default dict) -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $r "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) ($r.limits | default dict)) -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}

{{/* Tolerations, with the usual GPU-node taint tolerated when GPUs are asked for. */}}
{{- define "workbench.tolerations" -}}
{{- $t := .tolerations | default list -}}
{{- if gt (int .gpus) 0 -}}
{{- $t = append $t (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule") -}}
{{- end -}}
{{- if $t }}
tolerations:
{{- toYaml $t | nindent 2 }}
{{- end -}}
{{- end -}}

{{- define "workbench.podSpecCommon" -}}
securityContext:
{{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Cross-field checks JSON Schema cannot express. */}}
{{- define "workbench.validate" -}}
{{- $v := .Values -}}
{{- if and (eq $v.storage.type "minio") (not $v.storage.minio.bundled) (not $v.storage.minio.endpoint) -}}
{{- fail "storage.minio.endpoint is required when storage.minio.bundled is false: the URL of your MinIO or S3, e.g. https://minio.example.com" -}}
{{- end -}}
{{- if and (eq $v.storage.type "pvc") (not $v.storage.workspace.enabled) -}}
{{- fail "storage.workspace.enabled=false needs storage.type=minio: with pvc the workspace is the volume" -}}
{{- end -}}
{{- if and $v.serving.enabled (eq $v.serving.engine "tfserving") (not $v.serving.tfserving.models) -}}
{{- fail "serving.tfserving.models is required with serving.engine=tfserving: the model names under models/ to serve, e.g. [lenet]" -}}
{{- end -}}
{{- if and $v.ingress.enabled (not $v.ingress.host) -}}
{{- fail "ingress.host is required when ingress.enabled is true: the DNS name JupyterLab is served at" -}}
{{- end -}}
{{- $pg := $v.predictionLog.postgresql -}}
{{- if and $pg.existingSecret $pg.bundled -}}
{{- fail "predictionLog.postgresql: set existingSecret (a server you run) or bundled (one in this release), not both" -}}
{{- end -}}
{{- if and $v.serving.enabled (gt (float64 $v.predictionLog.sample) 0.0) (not (include "workbench.logDb" .)) (or $v.serving.autoscaling.enabled (gt (int $v.serving.replicas) 1)) -}}
{{- fail "predictionLog.sample > 0 with several serving pods needs PostgreSQL (predictionLog.postgresql.existingSecret or .bundled): the workspace's SQLite file does not work over a network filesystem" -}}
{{- end -}}
{{- $a := .Values.serving.autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "serving.autoscaling.minReplicas (%d) must not exceed serving.autoscaling.maxReplicas (%d)" (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- end -}}

{{/* One NetworkPolicy allowing ingress to some ports; from: [] means any source. */}}
{{- define "workbench.netpol" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ .name }}
  labels:
    {{- include "workbench.labels" (dict "root" .root "component" .component) | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- toYaml .selector | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    - ports:
        {{- range .ports }}
        - {port: {{ . }}, protocol: TCP}
        {{- end }}
      {{- if .from }}
      from:
        {{- toYaml .from | nindent 8 }}
      {{- end }}
{{- end -}}
