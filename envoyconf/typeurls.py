"""The ``@type`` URLs of the Envoy API messages the configuration uses."""

from __future__ import annotations

T_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
T_TLS_DOWN = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
T_SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105
T_TLS_UP = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
T_HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
T_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
T_EXT_AUTHZ_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
)
T_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
T_EXT_PROC_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
T_FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
T_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
T_RBAC_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
T_LOCAL_RL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
T_RL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
T_HEADER_MUTATION = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
)
T_CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
T_CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
T_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
T_CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
T_STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
T_REQ_WITHOUT_QUERY = (
    "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
)
T_OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
T_HEAP_MONITOR = (
    "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
)
T_CONN_MONITOR = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
    "DownstreamConnectionsConfig"
)
T_PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)
