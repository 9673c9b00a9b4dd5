{{/* Names and labels. */}}
{{- define "launchpad.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "launchpad.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Kubernetes name of one process: "<fullname>-<service>". Args: (dict "root" $ "name" "data"). */}}
{{- define "launchpad.component" -}}
{{- printf "%s-%s" (include "launchpad.fullname" .root | trunc 50 | trimSuffix "-") .name -}}
{{- end -}}

{{- define "launchpad.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: launchpad
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "launchpad.selectorLabels" . }}
{{- end -}}

{{- define "launchpad.selectorLabels" -}}
app.kubernetes.io/name: {{ include "launchpad.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "launchpad.image" -}}
{{- printf "%s-%s:%s" .root.Values.image.repository .name (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "launchpad.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "launchpad.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The backends this release runs, in port order. */}}
{{- define "launchpad.enabledBackends" -}}
{{- $names := list -}}
{{- range $name, $spec := .Values.backends -}}
{{- if $spec.enabled -}}{{- $names = append $names (list (int $spec.port) $name | join ":") -}}{{- end -}}
{{- end -}}
{{- $sorted := list -}}
{{- range (sortAlpha $names) -}}{{- $sorted = append $sorted (splitList ":" . | last) -}}{{- end -}}
{{- join "," $sorted -}}
{{- end -}}

{{/* One secretKeyRef env entry. Args: (dict "root" $ "key" "POSTGRES_DSN" "optional" false). */}}
{{- define "launchpad.secretEnv" -}}
- name: {{ .key }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.secrets.existingSecret | quote }}
      key: {{ .key }}
      optional: {{ .optional }}
{{- end -}}

{{/*
The dependency variables one process needs, by what it uses. Secrets are references, never values; a key
a configured dependency needs is required (optional: false), so a missing one stops the pod with a clear
CreateContainerConfigError instead of silently running on the embedded default.
POSTGRES_DSN (data, auth, deploy; storage and realtime read the tenant's policies from it).
LAUNCHPAD_INTERNAL_SECRET (every process): pods share no data dir, so the credential Launchpad processes
present to each other (services/core/internal.py) must come from the Secret. LAUNCHPAD_TENANT_DB_SECRET
(data on PostgreSQL): tenant role passwords derive from it, so it must outlive the pod and match across
replicas.
Args: (dict "root" $ "name" "deploy").
*/}}
{{- define "launchpad.dependencyEnv" -}}
{{- $root := .root -}}
{{- $deps := $root.Values.dependencies -}}
{{- $name := .name -}}
{{ include "launchpad.secretEnv" (dict "root" $root "key" "LAUNCHPAD_INTERNAL_SECRET" "optional" false) }}
{{- if and $deps.postgres.enabled (has $name (list "data" "auth" "deploy" "storage" "realtime")) }}
{{ include "launchpad.secretEnv" (dict "root" $root "key" "POSTGRES_DSN" "optional" false) }}
{{- end }}
{{- if and $deps.postgres.enabled (eq $name "data") }}
{{ include "launchpad.secretEnv" (dict "root" $root "key" "LAUNCHPAD_TENANT_DB_SECRET" "optional" false) }}
{{- end }}
{{- if and $deps.objectStorage.endpoint (has $name (list "storage" "deploy")) }}
- name: MINIO_ENDPOINT
  value: {{ $deps.objectStorage.endpoint | quote }}
{{ include "launchpad.secretEnv" (dict "root" $root "key" "MINIO_ACCESS_KEY" "optional" false) }}
{{ include "launchpad.secretEnv" (dict "root" $root "key" "MINIO_SECRET_KEY" "optional" false) }}
{{- end }}
{{- if and $deps.vault.addr (eq $name "deploy") }}
- name: VAULT_ADDR
  value: {{ $deps.vault.addr | quote }}
- name: VAULT_TRANSIT_KEY
  value: {{ $deps.vault.transitKey | quote }}
{{ include "launchpad.secretEnv" (dict "root" $root "key" "VAULT_TOKEN" "optional" false) }}
{{- end }}
{{- if and $root.Values.secrets.cosignKey.secretName (eq $name "deploy") }}
- name: COSIGN_KEY_PATH
  value: /etc/launchpad/cosign/{{ $root.Values.secrets.cosignKey.key }}
{{- end }}
{{- if and $root.Values.secrets.jwtSigningKey.secretName (eq $name "auth") }}
- name: LAUNCHPAD_JWT_KEY_PATH
  value: /etc/launchpad/jwt/{{ $root.Values.secrets.jwtSigningKey.key }}
{{- end }}
{{- if eq $name "realtime" }}
{{- if eq $root.Values.realtime.backend "redis" }}
{{ include "launchpad.secretEnv" (dict "root" $root "key" "REDIS_URL" "optional" false) }}
{{- else if eq $root.Values.realtime.backend "kafka" }}
- name: KAFKA_URL
  value: {{ $deps.kafka.url | quote }}
{{- end }}
{{- end }}
{{- if and $deps.redis.enabled (eq $name "edge") }}
{{ include "launchpad.secretEnv" (dict "root" $root "key" "REDIS_URL" "optional" false) }}
{{- end }}
{{- if and $deps.prometheus.url (eq $name "metrics") }}
- name: PROM_URL
  value: {{ $deps.prometheus.url | quote }}
{{- end }}
{{- if and $deps.loki.url (eq $name "logs") }}
- name: LOKI_URL
  value: {{ $deps.loki.url | quote }}
{{- end }}
{{- if eq $name "ai" }}
{{- /* Optional: without the key the embedded generator answers, so the release runs with no model. */}}
{{ include "launchpad.secretEnv" (dict "root" $root "key" "OPENAI_KEY" "optional" true) }}
- name: OPENAI_BASE_URL
  value: {{ $deps.llm.baseUrl | quote }}
- name: OPENAI_MODEL
  value: {{ $deps.llm.model | quote }}
- name: LAUNCHPAD_AI_TIMEOUT_MS
  value: {{ int $deps.llm.timeoutMs | toString | quote }}
{{- end }}
{{- end -}}

{{/* The secret files a process mounts (volumes and volumeMounts). Args: (dict "root" $ "name" "auth"). */}}
{{- define "launchpad.secretFiles" -}}
{{- $secrets := .root.Values.secrets -}}
{{- if and (eq .name "auth") $secrets.jwtSigningKey.secretName -}}
{{- list (dict "volume" "jwt-key" "secret" $secrets.jwtSigningKey.secretName "key" $secrets.jwtSigningKey.key "path" "/etc/launchpad/jwt") | toJson -}}
{{- else if and (eq .name "deploy") $secrets.cosignKey.secretName -}}
{{- list (dict "volume" "cosign-key" "secret" $secrets.cosignKey.secretName "key" $secrets.cosignKey.key "path" "/etc/launchpad/cosign") | toJson -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/*
The pod spec parts every process shares: volumes for the only writable paths, security contexts.
Args: (dict "root" $ "name" "data" "spec" <backend values or edge values>).
*/}}
{{- define "launchpad.podCommon" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "launchpad.serviceAccountName" $root }}
automountServiceAccountToken: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: data
    {{- toYaml (.spec.dataVolume | default $root.Values.dataVolume) | nindent 4 }}
  - name: logs
    {{- toYaml $root.Values.logVolume | nindent 4 }}
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
  {{- range (include "launchpad.secretFiles" . | fromJsonArray) }}
  - name: {{ .volume }}
    secret:
      secretName: {{ .secret }}
      defaultMode: 0440
      items:
        - key: {{ .key }}
          path: {{ .key }}
  {{- end }}
{{- end -}}

{{/* The container parts every process shares. Args as launchpad.podCommon. */}}
{{- define "launchpad.containerCommon" -}}
{{- $root := .root -}}
image: {{ include "launchpad.image" . | quote }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ include "launchpad.fullname" $root }}
env:
  - name: LAUNCHPAD_SERVICE
    value: {{ .name }}
  {{- with (include "launchpad.dependencyEnv" . | trim) }}
  {{- . | nindent 2 }}
  {{- end }}
  {{- range .spec.secretEnv }}
  {{- include "launchpad.secretEnv" (dict "root" $root "key" . "optional" true) | nindent 2 }}
  {{- end }}
resources:
  {{- toYaml (.spec.resources | default $root.Values.defaultResources) | nindent 2 }}
volumeMounts:
  - name: data
    mountPath: /var/lib/launchpad
  - name: logs
    mountPath: /var/log/launchpad
  - name: tmp
    mountPath: /tmp
  {{- range (include "launchpad.secretFiles" . | fromJsonArray) }}
  - name: {{ .volume }}
    mountPath: {{ .path }}
    readOnly: true
  {{- end }}
{{- end -}}

{{/*
Combinations that cannot work fail the render with the reason, instead of deploying something that loses
messages or data. Called once, from configmap.yaml.
*/}}
{{- define "launchpad.validate" -}}
{{- $v := .Values -}}
{{- $deps := $v.dependencies -}}
{{- if not (has $v.realtime.backend (list "embedded" "redis" "kafka")) -}}
{{- fail (printf "realtime.backend must be embedded, redis or kafka, got %q" $v.realtime.backend) -}}
{{- end -}}
{{- if and $v.backends.realtime.enabled (gt (int $v.backends.realtime.replicas) 1) (eq $v.realtime.backend "embedded") -}}
{{- fail (printf "backends.realtime.replicas=%d needs realtime.backend=redis or kafka: the embedded broker lives in one pod, so subscribers on one replica would miss messages published through another" (int $v.backends.realtime.replicas)) -}}
{{- end -}}
{{- if and (eq $v.realtime.backend "redis") (not $deps.redis.enabled) -}}
{{- fail "realtime.backend=redis needs dependencies.redis.enabled=true (and the key REDIS_URL in secrets.existingSecret)" -}}
{{- end -}}
{{- if and (eq $v.realtime.backend "kafka") (not $deps.kafka.url) -}}
{{- fail "realtime.backend=kafka needs dependencies.kafka.url (bootstrap host:port)" -}}
{{- end -}}
{{- range $name := list "data" "auth" "deploy" -}}
{{- $spec := index $v.backends $name -}}
{{- if and $spec.enabled (gt (int $spec.replicas) 1) (not $deps.postgres.enabled) -}}
{{- fail (printf "backends.%s.replicas=%d needs dependencies.postgres.enabled=true: the embedded SQLite store lives in one pod's data volume" $name (int $spec.replicas)) -}}
{{- end -}}
{{- end -}}
{{- range $name := list "storage" "deploy" -}}
{{- $spec := index $v.backends $name -}}
{{- if and $spec.enabled (gt (int $spec.replicas) 1) (not $deps.objectStorage.endpoint) -}}
{{- fail (printf "backends.%s.replicas=%d needs dependencies.objectStorage.endpoint: the embedded object store lives in one pod's data volume" $name (int $spec.replicas)) -}}
{{- end -}}
{{- end -}}
{{- if and $v.backends.auth.enabled (gt (int $v.backends.auth.replicas) 1) (not $v.secrets.jwtSigningKey.secretName) -}}
{{- fail (printf "backends.auth.replicas=%d needs secrets.jwtSigningKey.secretName: each pod would otherwise sign with a key of its own" (int $v.backends.auth.replicas)) -}}
{{- end -}}
{{- if not (regexMatch "^https?://[^/]" (toString $deps.llm.baseUrl)) -}}
{{- fail (printf "dependencies.llm.baseUrl must be an http(s):// URL (e.g. https://api.openai.com/v1), got %q" (toString $deps.llm.baseUrl)) -}}
{{- end -}}
{{- if not $deps.llm.model -}}
{{- fail "dependencies.llm.model must name a model (OPENAI_MODEL), e.g. gpt-4o-mini" -}}
{{- end -}}
{{- if le (int $deps.llm.timeoutMs) 0 -}}
{{- fail (printf "dependencies.llm.timeoutMs must be a positive number of milliseconds, got %v" $deps.llm.timeoutMs) -}}
{{- end -}}
{{- range $key, $_ := $v.config -}}
{{- if regexMatch "(?i)(DSN|PASSWORD|SECRET|TOKEN|KEY|REDIS_URL)" $key -}}
{{- fail (printf "config.%s looks like a secret: put it in the Secret secrets.existingSecret (see values.yaml), never in values" $key) -}}
{{- end -}}
{{- end -}}
{{- if and $v.edge.autoscaling.enabled (lt (int $v.edge.autoscaling.maxReplicas) (int $v.edge.autoscaling.minReplicas)) -}}
{{- fail "edge.autoscaling.maxReplicas must be >= edge.autoscaling.minReplicas" -}}
{{- end -}}
{{- end -}}
