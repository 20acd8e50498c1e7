{{/*
Names are fixed (kubesandbox-operator, kubesandbox-gateway, kubesandbox-node-agent): the CLI
finds the Service kubesandbox-gateway, node agents and the operator find each other through
Leases, and the cluster-scoped objects (CRD, ClusterRoles, the admission policy) exist once per
cluster. So: one release per cluster.
*/}}

{{- define "kubesandbox.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: kubesandbox
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: kubesandbox
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kubesandbox.selectorLabels" -}}
app.kubernetes.io/name: kubesandbox
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kubesandbox.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "kubesandbox.controllerImage" -}}
{{ printf "%s/controller:%s" .Values.image.registry (include "kubesandbox.tag" .) }}
{{- end }}

{{- define "kubesandbox.nodeAgentImage" -}}
{{ printf "%s/node-agent:%s" .Values.image.registry (include "kubesandbox.tag" .) }}
{{- end }}

{{- define "kubesandbox.nodeAgentUser" -}}
{{ printf "system:serviceaccount:%s:kubesandbox-node-agent" .Release.Namespace }}
{{- end }}

{{/* The operator and the gateway: non-root, nothing writable but /tmp, no capabilities. */}}
{{- define "kubesandbox.restrictedPod" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "kubesandbox.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{- define "kubesandbox.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* nodeSelector, tolerations and affinity of one component's values */}}
{{- define "kubesandbox.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The node agent's configuration file (NodeAgentConfig keys, docs/node-agent.md). */}}
{{- define "kubesandbox.nodeAgentConfig" -}}
{{- $agent := .Values.nodeAgent -}}
{{- $config := dict
  "namespace" .Release.Namespace
  "listen" (printf "0.0.0.0:%v" $agent.port)
  "tls" $agent.tls
  "stateDir" $agent.stateDir
  "cacheDir" $agent.cacheDir
  "cgroupRoot" "/host/sys/fs/cgroup"
  "cgroupParent" $agent.cgroupParent
  "network" $agent.network
  "logLevel" .Values.logLevel
-}}
{{- if $agent.allowEmulation }}{{ $_ := set $config "allowEmulation" true }}{{ end -}}
{{- with $agent.plainHttpRegistries }}{{ $_ := set $config "plainHttpRegistries" . }}{{ end -}}
{{- with $agent.registryMirrors }}{{ $_ := set $config "registryMirrors" . }}{{ end -}}
{{- with $agent.allowedHostPaths }}{{ $_ := set $config "allowedHostPaths" . }}{{ end -}}
{{- if $agent.egressUpstreamCA }}{{ $_ := set $config "egressUpstreamCAs" (list "/etc/kubesandbox/egress-upstream-ca.pem") }}{{ end -}}
{{- toYaml (mustMergeOverwrite $config (deepCopy $agent.extraConfig)) }}
{{- end }}
