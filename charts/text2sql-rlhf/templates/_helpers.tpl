{{/*
Chart name, or nameOverride.
*/}}
{{- define "text2sql-rlhf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name: fullnameOverride, else the release name when it already holds the
chart name, else "<release>-<chart>"; at most 63 characters (DNS label).
*/}}
{{- define "text2sql-rlhf.fullname" -}}
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

{{/*
"<chart>-<version>" for the helm.sh/chart label.
*/}}
{{- define "text2sql-rlhf.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every resource carries.
*/}}
{{- define "text2sql-rlhf.labels" -}}
helm.sh/chart: {{ include "text2sql-rlhf.chart" . }}
{{ include "text2sql-rlhf.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: text2sql-rlhf
text2sql-rlhf.dev/run-id: {{ .Values.runId | quote }}
{{- end }}

{{/*
Labels that identify this release's pods (the PodMonitor selects on them).
*/}}
{{- define "text2sql-rlhf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "text2sql-rlhf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The run graph, in order: the graph of runConfig.rl.algorithm among those generated from the stage
registry into _steps.tpl (hack/gen-steps.py); "<algorithm>+rm" when that algorithm's reward list
has an `rm` term. Each entry: name (the step, the Job's stage label), kind, dependsOn.
*/}}
{{- define "text2sql-rlhf.steps" -}}
{{- $rc := .Values.runConfig | default dict }}
{{- $algorithm := (($rc.rl | default dict).algorithm) | default (include "text2sql-rlhf.defaultAlgorithm" .) }}
{{- $graphs := include "text2sql-rlhf.graphs" . | fromYaml }}
{{- $key := $algorithm }}
{{- $settings := index ($rc.stages | default dict) $algorithm | default dict }}
{{- range $term := ($settings.rewards | default list) }}
{{- if eq (toString $term.name) "rm" }}{{ $key = printf "%s+rm" $algorithm }}{{ end }}
{{- end }}
{{- if not (hasKey $graphs $key) }}
{{- fail (printf "runConfig.rl.algorithm %q is not an RL algorithm of this chart; use one of: %s" $algorithm (keys $graphs | sortAlpha | join ", ")) }}
{{- end }}
{{- index $graphs $key | toYaml }}
{{- end }}

{{/*
A step's settings: stageDefaults with stages.<step> merged over it (maps merge, lists and scalars
replace). Returned as JSON: callers use `fromJson`, so numbers come back as floats (wrap in `int`).
Arguments: dict root step.
*/}}
{{- define "text2sql-rlhf.stepSettings" -}}
{{- $root := .root }}
{{- $override := index ($root.Values.stages | default dict) .step | default dict }}
{{- mustMergeOverwrite (deepCopy $root.Values.stageDefaults) (deepCopy $override) | toJson }}
{{- end }}

{{/*
Is the step rendered? Single-stage mode: only the named step. Whole run: the enabled steps.
Arguments: dict root step. Prints "true" or nothing.
*/}}
{{- define "text2sql-rlhf.stepRendered" -}}
{{- $root := .root }}
{{- if $root.Values.stage }}
{{- if eq $root.Values.stage .step }}true{{ end }}
{{- else }}
{{- $s := include "text2sql-rlhf.stepSettings" . | fromJson }}
{{- if $s.enabled }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Job name of a step: "<fullname>-<runId>-<step with _ as ->". It must fit a DNS label (63); the
render fails instead of truncating, because two truncated names could collide. Multi-node steps
keep room for the "-<index>" pod hostnames of the Indexed Job.
Arguments: dict root step [nodes].
*/}}
{{- define "text2sql-rlhf.jobName" -}}
{{- $name := printf "%s-%s-%s" (include "text2sql-rlhf.fullname" .root) .root.Values.runId (replace "_" "-" .step) }}
{{- $limit := 63 }}
{{- $nodes := int (.nodes | default 1) }}
{{- if gt $nodes 1 }}
{{- $limit = sub 63 (add 1 (len (toString (sub $nodes 1)))) | int }}
{{- end }}
{{- if gt (len $name) $limit }}
{{- fail (printf "Job name %q of step %s is %d characters, more than %d: use a shorter release name, fullnameOverride or runId" $name .step (len $name) $limit) }}
{{- end }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- fail (printf "Job name %q of step %s is not a DNS label starting with a letter: use a release name or fullnameOverride starting with a letter" $name .step) }}
{{- end }}
{{- $name }}
{{- end }}

{{/*
Name of the ConfigMap holding the run config.
*/}}
{{- define "text2sql-rlhf.configMapName" -}}
{{- printf "%s-%s-config" (include "text2sql-rlhf.fullname" .) .Values.runId }}
{{- end }}

{{/*
The run config document: runConfig with run_id taken from runId.
*/}}
{{- define "text2sql-rlhf.runConfig" -}}
{{- $cfg := deepCopy (.Values.runConfig | default dict) }}
{{- $_ := set $cfg "run_id" .Values.runId }}
{{- toYaml $cfg }}
{{- end }}

{{/*
"repository[:tag|@digest]" of an image map; an empty tag falls back to the chart's appVersion.
Arguments: dict root image.
*/}}
{{- define "text2sql-rlhf.imageRef" -}}
{{- $img := .image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/*
Controller ServiceAccount name.
*/}}
{{- define "text2sql-rlhf.controllerServiceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (printf "%s-controller" (include "text2sql-rlhf.fullname" .)) .Values.controller.serviceAccount.name }}
{{- else }}
{{- required "controller.serviceAccount.name is required when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Is the controller (and its RBAC) rendered? Whole-run mode with controller.enabled.
*/}}
{{- define "text2sql-rlhf.controllerRendered" -}}
{{- if and (not .Values.stage) .Values.controller.enabled }}true{{ end }}
{{- end }}

{{/*
S3 credentials as env entries read from the existing Secret (nothing when no Secret is named). The
variable names are the ones the run config's store.s3 section tells the stages to read.
*/}}
{{- define "text2sql-rlhf.s3Env" -}}
{{- $rc := (.Values.runConfig.store | default dict).s3 | default dict }}
{{- with .Values.store.s3 }}
{{- if .existingSecret }}
- name: {{ $rc.access_key_env | default "AWS_ACCESS_KEY_ID" }}
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .accessKeyIdKey | quote }}
- name: {{ $rc.secret_key_env | default "AWS_SECRET_ACCESS_KEY" }}
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .secretAccessKeyKey | quote }}
{{- if .sessionTokenKey }}
- name: {{ $rc.session_token_env | default "AWS_SESSION_TOKEN" }}
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .sessionTokenKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks over the whole values that the schema cannot express; rendered (as nothing) by the ConfigMap
template so they run once per render.
*/}}
{{- define "text2sql-rlhf.validate" -}}
{{- $workdir := toString (.Values.runConfig.workdir | default "") }}
{{- if not (hasPrefix "/" $workdir) }}
{{- fail (printf "runConfig.workdir must be an absolute path (an emptyDir is mounted there), got %q" $workdir) }}
{{- end }}
{{- if has $workdir (list "/" "/tmp" "/cache" "/dev/shm" "/etc/t2s") }}
{{- fail (printf "runConfig.workdir %q collides with a mount of the chart; use a directory of its own such as /work" $workdir) }}
{{- end }}
{{- $storeKind := "" }}
{{- with .Values.runConfig.store }}{{ $storeKind = toString (.kind | default "") }}{{ end }}
{{- if ne $storeKind "s3" }}
{{- fail (printf "runConfig.store.kind must be s3 on Kubernetes (each pod has its own disk, so a local store loses every artifact), got %q" $storeKind) }}
{{- end }}
{{- $s3 := .Values.runConfig.store.s3 | default dict }}
{{- if not (and $s3.endpoint $s3.bucket) }}
{{- fail "runConfig.store.s3.endpoint and runConfig.store.s3.bucket must be set: every stage reads and publishes its artifacts there" }}
{{- end }}
{{- $root := . }}
{{- $steps := include "text2sql-rlhf.steps" . | fromYamlArray }}
{{- range $steps }}
{{- $step := .name }}
{{- $s := include "text2sql-rlhf.stepSettings" (dict "root" $root "step" $step) | fromJson }}
{{- if and (not $root.Values.stage) (include "text2sql-rlhf.stepRendered" (dict "root" $root "step" $step)) }}
{{- range .dependsOn }}
{{- if not (include "text2sql-rlhf.stepRendered" (dict "root" $root "step" .)) }}
{{- fail (printf "step %s is enabled but the step it depends on, %s, is disabled (stages.%s.enabled: false): disable %s too, or enable %s" $step . . $step .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
