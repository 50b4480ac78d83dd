import Foundation
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Proto
import ServiceLifecycle

/// Prometheus metrics for every process (swift-metrics, with swift-prometheus behind it),
/// served on a private listener (`--metrics-listen`), never on the public port.
public enum Telemetry {
    public static let registry = PrometheusCollectorRegistry()

    /// Call first thing in `main`, before any metric below is touched (a metric made before
    /// the bootstrap would report nowhere).
    public static func bootstrap() {
        var factory = PrometheusMetricsFactory(registry: registry)
        // Round trips inside one data centre: 50 µs … 2.5 s.
        factory.defaultDurationHistogramBuckets = [
            .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
            .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
        ]
        MetricsSystem.bootstrap(factory)
    }

    /// The scrape: every metric, and this process's resident memory read just now.
    public static func scrape() -> [UInt8] {
        processResidentBytes.record(Self.residentBytes())
        return registry.emitToBuffer()
    }

    static func residentBytes() -> Int64 {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
              let pages = text.split(separator: " ").dropFirst().first.flatMap({ Int64($0) }) else { return 0 }
        return pages * Int64(sysconf(Int32(_SC_PAGESIZE)))
    }

    // MARK: every process
    public static let processResidentBytes = Metrics.Gauge(label: "securechat_process_resident_bytes")
    public static let redisRoundTrip = Metrics.Timer(label: "securechat_redis_rtt_seconds")
    public static let coordinatorRoundTrip = Metrics.Timer(label: "securechat_coordinator_rtt_seconds")
    public static func linkReconnects(_ link: String) -> Metrics.Counter {
        Metrics.Counter(label: "securechat_link_reconnects_total", dimensions: [("link", link)])
    }

    // MARK: gateway
    public static func logins(_ outcome: String) -> Metrics.Counter {
        Metrics.Counter(label: "securechat_logins_total", dimensions: [("outcome", outcome)])
    }
    public static func tlsHandshakes(_ result: String) -> Metrics.Counter {
        Metrics.Counter(label: "securechat_tls_handshakes_total", dimensions: [("result", result)])
    }
    public static let clientStreams = Metrics.Meter(label: "securechat_client_streams_open")
    public static let deliveries = Metrics.Counter(label: "securechat_deliveries_total")
    public static let deliveredBytes = Metrics.Counter(label: "securechat_delivered_bytes_total")
    public static let slowClientCloses = Metrics.Counter(label: "securechat_slow_client_closes_total")
    public static let passwordChecksInFlight = Metrics.Meter(label: "securechat_password_checks_in_flight")
    public static let workerLinksOpened = Metrics.Counter(label: "securechat_worker_links_opened_total")

    // MARK: worker
    public static let messagesStored = Metrics.Counter(label: "securechat_messages_total")
    /// Store steps tried again by the worker during a Redis outage (`--redis-hold-ms`), and the
    /// messages still not stored when the hold ran out (answered `unavailable`).
    public static let storeRetries = Metrics.Counter(label: "securechat_store_retries_total")
    public static let storeHoldsExpired = Metrics.Counter(label: "securechat_store_holds_expired_total")
    public static let filesStored = Metrics.Counter(label: "securechat_files_stored_total")
    public static let workerStreams = Metrics.Meter(label: "securechat_worker_streams_open")
    /// Rooms whose channel the worker is subscribed to (a local member is connected).
    public static let workerRooms = Metrics.Meter(label: "securechat_worker_rooms_relayed")
    public static let workerDeliveries = Metrics.Counter(label: "securechat_worker_deliveries_total")
    public static func rateLimited(_ kind: String) -> Metrics.Counter {
        Metrics.Counter(label: "securechat_rate_limited_total", dimensions: [("kind", kind)])
    }

    // MARK: coordinator
    public static let usersOnline = Metrics.Gauge(label: "securechat_users_online")
    public static let workersLive = Metrics.Gauge(label: "securechat_workers_live")
    /// 1 while this coordinator holds the lease and serves, 0 while a standby.
    public static let coordinatorActive = Metrics.Gauge(label: "securechat_coordinator_active")
    /// The epoch (fencing token) this coordinator last became active under.
    public static let coordinatorEpoch = Metrics.Gauge(label: "securechat_coordinator_epoch")
    public static let coordinatorTakeovers = Metrics.Counter(label: "securechat_coordinator_takeovers_total")
    /// Made once per (kind, result): a rate check is per message, and making a counter is a
    /// registry lookup under a lock.
    private static let rateCheckCounters: [String: Metrics.Counter] = {
        var out: [String: Metrics.Counter] = [:]
        for kind in RateLimitKind.allCases {
            for result in ["allowed", "refused"] {
                out[kind.rawValue + result] = Metrics.Counter(label: "securechat_rate_checks_total",
                                                              dimensions: [("kind", kind.rawValue), ("result", result)])
            }
        }
        return out
    }()
    public static func rateChecks(_ kind: RateLimitKind, allowed: Bool) -> Metrics.Counter? {
        rateCheckCounters[kind.rawValue + (allowed ? "allowed" : "refused")]
    }
}

/// Serves `GET /metrics` (Prometheus text format) on a private address until shutdown.
public struct MetricsService: Service {
    let endpoint: Endpoint
    let group: EventLoopGroup
    let logger: Logger

    /// From `--metrics-listen HOST:PORT`; nil when it is not given (metrics then stay unserved).
    public init?(options: Options, group: EventLoopGroup, logger: Logger) throws {
        guard let text = options.string("metrics-listen") else { return nil }
        let endpoint = try Endpoint(parsing: text)
        guard case .tcp = endpoint else { throw Options.Invalid("--metrics-listen must be HOST:PORT") }
        self.endpoint = endpoint
        self.group = group
        self.logger = logger
    }

    public func run() async throws {
        let server = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.pipeline.configureHTTPServerPipeline().flatMapThrowing {
                    try ch.pipeline.syncOperations.addHandler(MetricsHTTPHandler())
                }
            }
            .bind(to: endpoint)
        logger.info("metrics listening", metadata: ["metrics": "http://\(endpoint)/metrics"])
        try? await gracefulShutdown()
        try? await server.close()
    }
}

final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private var head: HTTPRequestHead?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case let .head(h): head = h
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            let found = head.method == .GET && (head.uri == "/metrics" || head.uri.hasPrefix("/metrics?"))
            let body = found ? ByteBuffer(bytes: Telemetry.scrape()) : ByteBuffer(string: "not found\n")
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
            headers.add(name: "Content-Length", value: String(body.readableBytes))
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: found ? .ok : .notFound, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
