{{/*
One step's Job, as a YAML document. templates/stages.yaml renders it once per step: into the spec
ConfigMap the controller creates the Jobs from (whole run), or directly (single stage, or a whole
run chained by hand). Arguments: dict root step (an entry of text2sql-rlhf.steps) order suspend.
*/}}
{{- define "text2sql-rlhf.stageJob" -}}
{{- $root := .root }}
{{- $step := .step }}
{{- $stepName := $step.name }}
{{- $order := .order }}
{{- $suspend := .suspend }}
{{- $s := include "text2sql-rlhf.stepSettings" (dict "root" $root "step" $stepName) | fromJson }}
{{- $gpus := int $s.gpus }}
{{- $nodes := int $s.nodes }}
{{- if and (gt $nodes 1) (lt $gpus 1) }}
{{- fail (printf "stages.%s.nodes is %d but gpus is %d: a multi-node step needs gpus >= 1 (torchrun runs one process per GPU)" $stepName $nodes $gpus) }}
{{- end }}
{{- /* evaluate and prepare are one CPU process; export merges on one process */}}
{{- if and (has $step.kind (list "evaluate" "prepare" "export")) (or (gt $gpus 1) (gt $nodes 1)) }}
{{- fail (printf "stages.%s: the %s stage runs in one process, never under torchrun (gpus %d, nodes %d): set gpus <= 1 and nodes <= 1" $stepName $step.kind $gpus $nodes) }}
{{- end }}
{{- $jobName := include "text2sql-rlhf.jobName" (dict "root" $root "step" $stepName "nodes" $nodes) }}
{{- $image := mustMergeOverwrite (deepCopy $root.Values.image) (deepCopy ($s.image | default dict)) }}
{{- $workdir := $root.Values.runConfig.workdir }}
{{- $stageArgs := list "stage" "run" $stepName "--config" "/etc/t2s/run.yaml" }}
{{- $command := prepend $stageArgs "t2s" }}
{{- if or (gt $gpus 1) (gt $nodes 1) }}
{{- /* t2s torchrun: torchrun that keeps a worker's exit code 2 (bad input), which plain torchrun reports as 1 */}}
{{- $launcher := list "t2s" "torchrun" (printf "--nproc-per-node=%d" $gpus) }}
{{- if gt $nodes 1 }}
{{- $launcher = concat $launcher (list (printf "--nnodes=%d" $nodes) "--node-rank=$(JOB_COMPLETION_INDEX)" (printf "--master-addr=%s-0.%s" $jobName $jobName) (printf "--master-port=%d" (int $root.Values.distributed.masterPort))) }}
{{- end }}
{{- $command = concat $launcher (list "--") $stageArgs }}
{{- end }}
{{- $underTorchrun := or (gt $gpus 1) (gt $nodes 1) }}
{{- $resources := deepCopy ($s.resources | default dict) }}
{{- if gt $gpus 0 }}
{{- $limits := $resources.limits | default dict }}
{{- $_ := set $limits $root.Values.gpuResourceName $gpus }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- $tolerations := $s.tolerations | default list }}
{{- if gt $gpus 0 }}
{{- $tolerations = concat $tolerations ($root.Values.gpuTolerations | default list) }}
{{- end }}
{{- $stageLabels := dict "app.kubernetes.io/component" "stage" "text2sql-rlhf.dev/stage" $stepName }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ $jobName }}
  labels:
    {{- include "text2sql-rlhf.labels" $root | nindent 4 }}
    {{- toYaml $stageLabels | nindent 4 }}
    {{- with include "text2sql-rlhf.kueueLabels" (dict "root" $root "step" $stepName) }}
    {{- . | nindent 4 }}
    {{- end }}
  annotations:
    text2sql-rlhf.dev/order: {{ $order | quote }}
    text2sql-rlhf.dev/depends-on: {{ join "," $step.dependsOn | quote }}
    text2sql-rlhf.dev/kind: {{ $step.kind }}
spec:
  suspend: {{ $suspend }}
  backoffLimit: {{ int $s.backoffLimit }}
  {{- if gt (int64 $s.activeDeadlineSeconds) 0 }}
  activeDeadlineSeconds: {{ int64 $s.activeDeadlineSeconds }}
  {{- end }}
  {{- if ge (int $s.ttlSecondsAfterFinished) 0 }}
  ttlSecondsAfterFinished: {{ int $s.ttlSecondsAfterFinished }}
  {{- end }}
  {{- if gt $nodes 1 }}
  completionMode: Indexed
  completions: {{ $nodes }}
  parallelism: {{ $nodes }}
  {{- end }}
  podFailurePolicy:
    rules:
      # exit code 2 = bad input or config (text2sql_core.errors.BadInput): a retry cannot help.
      # No containerName: it holds for the validate-config init container too.
      - action: FailJob
        onExitCodes:
          operator: In
          values: [2]
      # evictions, preemptions and node drains do not use up backoffLimit
      - action: Ignore
        onPodConditions:
          - type: DisruptionTarget
            status: "True"
  template:
    metadata:
      labels:
        {{- include "text2sql-rlhf.labels" $root | nindent 8 }}
        {{- toYaml $stageLabels | nindent 8 }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        text2sql-rlhf.dev/kind: {{ $step.kind }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      enableServiceLinks: false
      {{- with $s.serviceAccountName }}
      serviceAccountName: {{ . }}
      {{- end }}
      {{- if gt $nodes 1 }}
      subdomain: {{ $jobName }}
      {{- end }}
      {{- with $s.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with $s.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $s.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $underTorchrun }}
      # the config is checked before GPUs are spun up under torchrun: a bad config fails the Job at once
      # (exit code 2) without starting one process per GPU.
      initContainers:
        - name: validate-config
          image: {{ include "text2sql-rlhf.imageRef" (dict "root" $root "image" $image) | quote }}
          imagePullPolicy: {{ $image.pullPolicy }}
          command: ["t2s", "config", "validate", "/etc/t2s/run.yaml"]
          env:
            - name: T2S_LOG_FORMAT
              value: json
            - name: HOME
              value: /tmp
          resources:
            requests:
              cpu: 100m
              memory: 256Mi
            limits:
              memory: 512Mi
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: run-config
              mountPath: /etc/t2s
              readOnly: true
            - name: tmp
              mountPath: /tmp
      {{- end }}
      containers:
        - name: stage
          image: {{ include "text2sql-rlhf.imageRef" (dict "root" $root "image" $image) | quote }}
          imagePullPolicy: {{ $image.pullPolicy }}
          command:
            {{- toYaml $command | nindent 12 }}
          workingDir: {{ $workdir }}
          env:
            - name: T2S_RUN_ID
              value: {{ $root.Values.runId | quote }}
            - name: T2S_STAGE
              value: {{ $stepName }}
            - name: T2S_LOG_FORMAT
              value: json
            - name: T2S_METRICS_PORT
              value: {{ $root.Values.metrics.port | quote }}
            # the root filesystem is read-only: every cache lives on emptyDirs
            - name: HOME
              value: /tmp
            - name: HF_HOME
              value: /cache/huggingface
            - name: TRITON_CACHE_DIR
              value: /cache/triton
            - name: XDG_CACHE_HOME
              value: /cache/xdg
            - name: TORCH_EXTENSIONS_DIR
              value: /cache/torch_extensions
            - name: MPLCONFIGDIR
              value: /cache/matplotlib
            {{- with include "text2sql-rlhf.s3Env" $root }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $s.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
            {{- if gt $nodes 1 }}
            - name: rendezvous
              containerPort: {{ $root.Values.distributed.masterPort }}
            {{- end }}
          {{- with $resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: run-config
              mountPath: /etc/t2s
              readOnly: true
            - name: work
              mountPath: {{ $workdir }}
            - name: tmp
              mountPath: /tmp
            - name: cache
              mountPath: /cache
            - name: dshm
              mountPath: /dev/shm
      volumes:
        - name: run-config
          configMap:
            name: {{ include "text2sql-rlhf.configMapName" $root }}
        - name: work
          emptyDir:
            sizeLimit: {{ $s.workSize }}
        - name: tmp
          emptyDir:
            sizeLimit: {{ $s.tmpSize }}
        - name: cache
          emptyDir:
            sizeLimit: {{ $s.cacheSize }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $s.shmSize }}
{{- end }}

{{/*
The headless Service a multi-node step's pods rendezvous through (nothing for a single-pod step).
Rendered directly by the release: it holds no scheduling state. Arguments: dict root step.
*/}}
{{- define "text2sql-rlhf.stageService" -}}
{{- $root := .root }}
{{- $stepName := .step.name }}
{{- $s := include "text2sql-rlhf.stepSettings" (dict "root" $root "step" $stepName) | fromJson }}
{{- $nodes := int $s.nodes }}
{{- if gt $nodes 1 }}
{{- $jobName := include "text2sql-rlhf.jobName" (dict "root" $root "step" $stepName "nodes" $nodes) }}
{{- $stageLabels := dict "app.kubernetes.io/component" "stage" "text2sql-rlhf.dev/stage" $stepName }}
apiVersion: v1
kind: Service
metadata:
  name: {{ $jobName }}
  labels:
    {{- include "text2sql-rlhf.labels" $root | nindent 4 }}
    {{- toYaml $stageLabels | nindent 4 }}
spec:
  # headless: gives each pod of the Indexed Job a DNS name, <job>-<index>.<service>
  clusterIP: None
  # the rendezvous address must resolve before the pods are ready
  publishNotReadyAddresses: true
  selector:
    app.kubernetes.io/instance: {{ $root.Release.Name }}
    text2sql-rlhf.dev/run-id: {{ $root.Values.runId | quote }}
    text2sql-rlhf.dev/stage: {{ $stepName }}
  ports:
    - name: rendezvous
      port: {{ $root.Values.distributed.masterPort }}
      targetPort: rendezvous

{{- end }}
{{- end }}
