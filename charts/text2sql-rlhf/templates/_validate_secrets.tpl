{{/*
Checks that keep secrets out of rendered manifests and requests the API server would refuse out of
the render. Included once by "text2sql-rlhf.validate". Messages never repeat a rejected value.
*/}}
{{- define "text2sql-rlhf.validateSecrets" -}}
{{- $root := . }}
{{- $endpoint := toString ((((.Values.runConfig | default dict).store | default dict).s3 | default dict).endpoint | default "") }}
{{- if contains "@" $endpoint }}
{{- fail "runConfig.store.s3.endpoint has a user part (user[:secret]@host; the value is not shown): credentials never go in the endpoint, which lands in a ConfigMap; give host[:port] and put the keys in the Secret named by store.s3.existingSecret" }}
{{- end }}
{{- include "text2sql-rlhf.checkEnv" (dict "path" "stageDefaults.env" "env" .Values.stageDefaults.env) }}
{{- range $step, $s := (.Values.stages | default dict) }}
{{- if kindIs "map" $s }}
{{- include "text2sql-rlhf.checkEnv" (dict "path" (printf "stages.%s.env" $step) "env" $s.env) }}
{{- end }}
{{- end }}
{{- include "text2sql-rlhf.checkEnv" (dict "path" "controller.env" "env" .Values.controller.env) }}
{{- range (include "text2sql-rlhf.steps" . | fromYamlArray) }}
{{- $s := include "text2sql-rlhf.stepSettings" (dict "root" $root "step" .name) | fromJson }}
{{- include "text2sql-rlhf.checkResources" (dict "path" (printf "stages.%s.resources (merged over stageDefaults.resources)" .name) "resources" $s.resources) }}
{{- end }}
{{- include "text2sql-rlhf.checkResources" (dict "path" "controller.resources" "resources" .Values.controller.resources) }}
{{- end }}

{{/*
Fail on an env entry named like a secret that carries a literal value.
Arguments: dict path env.
*/}}
{{- define "text2sql-rlhf.checkEnv" -}}
{{- $path := .path }}
{{- range $i, $e := (.env | default list) }}
{{- if and (kindIs "map" $e) (regexMatch "(?i)(secret|passw|token|access_?key|private_?key|credential|api_?key)" (toString $e.name)) (hasKey $e "value") (ne (toString $e.value) "") }}
{{- fail (printf "%s[%d] (%s) sets a secret as a literal value (not shown), which would be rendered into the Job: use valueFrom.secretKeyRef with a Secret" $path $i (toString $e.name)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A Kubernetes quantity ("500m", "8Gi", "1.5G", "2") as a plain number.
*/}}
{{- define "text2sql-rlhf.quantity" -}}
{{- $q := toString . }}
{{- $num := regexFind "^[0-9]*\\.?[0-9]+([eE][-+]?[0-9]+)?" $q }}
{{- $suffix := trimPrefix $num $q }}
{{- $units := dict "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 "k" 1000.0 "M" 1000000.0 "G" 1000000000.0 "T" 1000000000000.0 "P" 1000000000000000.0 "E" 1000000000000000000.0 "m" 0.001 "" 1.0 }}
{{- if or (eq $num "") (not (hasKey $units $suffix)) }}
{{- fail (printf "%q is not a Kubernetes quantity (like 500m, 8Gi, 2)" $q) }}
{{- end }}
{{- mulf (float64 $num) (get $units $suffix) }}
{{- end }}

{{/*
Fail when a limit is below its request: the API server would refuse the Job at create time.
Arguments: dict path resources.
*/}}
{{- define "text2sql-rlhf.checkResources" -}}
{{- $path := .path }}
{{- $requests := (.resources | default dict).requests | default dict }}
{{- $limits := (.resources | default dict).limits | default dict }}
{{- range $name, $limit := $limits }}
{{- if hasKey $requests $name }}
{{- $req := index $requests $name }}
{{- if lt (float64 (include "text2sql-rlhf.quantity" $limit)) (float64 (include "text2sql-rlhf.quantity" $req)) }}
{{- fail (printf "%s: limits.%s (%v) is below requests.%s (%v); Kubernetes refuses such a pod: raise the limit or lower the request" $path $name $limit $name $req) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
