{{/* Names: <release>-shoal, or the release name when it already says shoal. */}}
{{- define "shoal.fullname" -}}
{{- if contains "shoal" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-shoal" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: shoal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "agent"). */}}
{{- define "shoal.selector" -}}
app.kubernetes.io/name: shoal
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shoal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "shoal.serviceAccount" -}}
{{- $sa := index .root.Values.serviceAccounts .which -}}
{{- default (printf "%s-%s" (include "shoal.fullname" .root) .suffix) $sa.name -}}
{{- end -}}

{{- define "shoal.natsUrl" -}}
{{- if .Values.nats.bundled -}}
{{- printf "%s://%s-nats:4222" (ternary "tls" "nats" (ne .Values.nats.tls.secretName "")) (include "shoal.fullname" .) -}}
{{- else -}}
{{- .Values.nats.external.url -}}
{{- end -}}
{{- end -}}

{{- define "shoal.natsSecret" -}}
{{- if .Values.nats.bundled -}}{{ include "shoal.fullname" . }}-nats-auth{{- else -}}{{ .Values.nats.external.existingSecret }}{{- end -}}
{{- end -}}

{{/* Environment every component needs to reach NATS: servers, credentials from a Secret, TLS. */}}
{{- define "shoal.natsEnv" -}}
- name: SHOAL_NATS_SERVERS
  value: {{ include "shoal.natsUrl" . | quote }}
{{- if or (and .Values.nats.bundled .Values.nats.auth.enabled) (and (not .Values.nats.bundled) .Values.nats.external.existingSecret) }}
- name: SHOAL_NATS_USER
  valueFrom:
    secretKeyRef: { name: {{ include "shoal.natsSecret" . }}, key: user, optional: true }
- name: SHOAL_NATS_PASSWORD
  valueFrom:
    secretKeyRef: { name: {{ include "shoal.natsSecret" . }}, key: password, optional: true }
{{- end }}
{{- if and (not .Values.nats.bundled) .Values.nats.external.existingSecret }}
- name: SHOAL_NATS_TOKEN
  valueFrom:
    secretKeyRef: { name: {{ .Values.nats.external.existingSecret }}, key: token, optional: true }
{{- end }}
{{- if and (not .Values.nats.bundled) .Values.nats.external.credsSecret }}
- name: SHOAL_NATS_CREDS_FILE
  value: /etc/shoal/nats-creds/user.creds
{{- end }}
{{- if .Values.nats.tls.secretName }}
- name: SHOAL_NATS_TLS_CA
  value: /etc/shoal/nats-tls/ca.crt
{{- end }}
{{- end -}}

{{- define "shoal.natsVolumeMounts" -}}
{{- if .Values.nats.tls.secretName }}
- name: nats-tls
  mountPath: /etc/shoal/nats-tls
  readOnly: true
{{- end }}
{{- if and (not .Values.nats.bundled) .Values.nats.external.credsSecret }}
- name: nats-creds
  mountPath: /etc/shoal/nats-creds
  readOnly: true
{{- end }}
{{- end -}}

{{- define "shoal.natsVolumes" -}}
{{- if .Values.nats.tls.secretName }}
- name: nats-tls
  secret:
    secretName: {{ .Values.nats.tls.secretName }}
    items: [{ key: ca.crt, path: ca.crt }]
{{- end }}
{{- if and (not .Values.nats.bundled) .Values.nats.external.credsSecret }}
- name: nats-creds
  secret:
    secretName: {{ .Values.nats.external.credsSecret }}
    items: [{ key: creds, path: user.creds }]
{{- end }}
{{- end -}}

{{/* registries as the agent and discovery take them: name=URL,... */}}
{{- define "shoal.registries" -}}
{{- $out := list -}}
{{- range .Values.registries -}}
{{- $out = append $out (printf "%s=%s" .name (trimSuffix "/" .url)) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* mirrors as discovery takes them: name[@zone:Z|@region:R]=URL,... */}}
{{- define "shoal.mirrors" -}}
{{- $out := list -}}
{{- range $r := .Values.registries -}}
{{- range $m := ($r.mirrors | default list) -}}
{{- $scope := "" -}}
{{- if $m.zone }}{{ $scope = printf "@zone:%s" $m.zone }}{{ else if $m.region }}{{ $scope = printf "@region:%s" $m.region }}{{ end -}}
{{- $out = append $out (printf "%s%s=%s" $r.name $scope (trimSuffix "/" $m.url)) -}}
{{- end -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{- define "shoal.peerSecret" -}}
{{- default (printf "%s-peer" (include "shoal.fullname" .)) .Values.peer.existingSecret -}}
{{- end -}}

{{/* Pod security for the control-plane services: nothing but a process and a port. */}}
{{- define "shoal.restricted" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: { drop: [ALL] }
  seccompProfile: { type: RuntimeDefault }
{{- end -}}

{{/* Discovery: topology from Kubernetes, registries, the registry instances and their credentials. */}}
{{- define "shoal.discoveryEnv" -}}
- name: SHOAL_TOPOLOGY_SOURCE
  value: kubernetes
- name: SHOAL_KUBERNETES_AGENT_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: SHOAL_KUBERNETES_AGENT_SELECTOR
  value: {{ printf "app.kubernetes.io/name=shoal,app.kubernetes.io/instance=%s,app.kubernetes.io/component=agent" .Release.Name | quote }}
- name: SHOAL_KUBERNETES_ZONE_LABEL
  value: {{ .Values.topology.zoneLabel | quote }}
- name: SHOAL_KUBERNETES_REGION_LABEL
  value: {{ .Values.topology.regionLabel | quote }}
- name: SHOAL_KUBERNETES_VSWITCH_LABEL
  value: {{ .Values.topology.vswitchLabel | quote }}
- name: SHOAL_KUBERNETES_POOL_LABEL
  value: {{ .Values.topology.poolLabel | quote }}
- name: SHOAL_KUBERNETES_POOL
  value: {{ .Values.edgeNodePoolId | quote }}
- name: SHOAL_REGISTRIES
  value: {{ include "shoal.registries" . | quote }}
- name: SHOAL_MIRRORS
  value: {{ include "shoal.mirrors" . | quote }}
- name: SHOAL_INSTANCES
  value: {{ .Values.instances | replace " " "" | quote }}
- name: SHOAL_REGION
  value: {{ .Values.region | quote }}
- name: SHOAL_VPC_ID
  value: {{ .Values.vpcId | quote }}
{{- if .Values.rrsa.enabled }}
- name: SHOAL_CREDENTIALS_METHOD
  value: rrsa
- name: SHOAL_RRSA_TOKEN_FILE
  value: /var/run/secrets/ack.alibabacloud.com/rrsa-tokens/token
- name: SHOAL_RRSA_ROLE_ARN
  value: {{ .Values.rrsa.roleArn | quote }}
- name: SHOAL_RRSA_OIDC_PROVIDER_ARN
  value: {{ .Values.rrsa.oidcProviderArn | quote }}
- name: SHOAL_RRSA_ASSUME_ROLE_ARN
  value: {{ .Values.rrsa.assumeRoleArn | quote }}
- name: SHOAL_RRSA_SESSION_DURATION
  value: {{ printf "%ds" (int .Values.rrsa.expireDuration) | quote }}
- name: SHOAL_RRSA_STS_ENDPOINT
  value: {{ .Values.rrsa.stsEndpoint | quote }}
{{- else if or .Values.accessKey.existingSecret .Values.accessKey.id }}
- name: SHOAL_CREDENTIALS_METHOD
  value: access-key
- name: SHOAL_CREDENTIALS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: { name: {{ include "shoal.accessKeySecret" . }}, key: accessKeyId }
- name: SHOAL_CREDENTIALS_ACCESS_KEY_SECRET
  valueFrom:
    secretKeyRef: { name: {{ include "shoal.accessKeySecret" . }}, key: accessKeySecret }
{{- else }}
- name: SHOAL_CREDENTIALS_METHOD
  value: ecs-role
{{- end }}
{{- end -}}

{{- define "shoal.accessKeySecret" -}}
{{- default (printf "%s-access-key" (include "shoal.fullname" .)) .Values.accessKey.existingSecret -}}
{{- end -}}
