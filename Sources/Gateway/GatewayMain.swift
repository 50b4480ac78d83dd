import ChatCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Proto
import ServiceLifecycle

/// `securechat-gateway`: the public HTTPS/WSS port.
@main
enum GatewayMain {
    static let help = """
    usage: securechat-gateway [flags]
    The public HTTPS/WSS port: the web client, login and logout, and every client's WebSocket,
    carried to workers over one authenticated link per (event loop, worker).
      --port P                   public port (default 5001); --host ADDR (default 0.0.0.0)
      --cert PEM, --key PEM      certificate chain and key (default <state-dir>/tls/)
      --users-file F             user names and scrypt hashes (default users.json)
      --allow-demo-users         start even though the users file holds the demo accounts with their
                                 published passwords (admin, team_member): a demo, said in the log and /healthz
      --web-dir DIR              the web client's files (default web)
      --public-origin LIST       comma-separated origins allowed for /ws, login, logout
      --session-idle-seconds N, --session-max-seconds N   session lifetimes (default 43200, 604800)
      --max-queued-frames N, --max-queued-bytes N         per-client outgoing queue (default 1024, 1048576)
      --flush-coalesce-ms D      flush a loop's clients at most once per D ms under load (default 10; 0 off)
      --ping-seconds S           WebSocket keepalive interval (default 30)
      --worker-link-timeout-ms N a worker link silent this long is gone: its clients get 1012 and
                                 reconnect to another worker, which new streams prefer for 3 s (default
                                 10000; pinged every fifth of it)
      --request-timeout-seconds S   time for one whole request, TLS handshake included (default 10)
      --max-file-bytes N         largest upload to POST /api/files (default 10485760)
      --files-quota-bytes N      bytes all stored files may take in Redis, as base64 (default 1073741824)
      --event-loops N            event-loop threads (default: one per core)
      --max-logins-in-flight N   password checks at once; beyond, 503 with Retry-After (default 4 per core)
      --id NAME                  the gateway's name on its links (default gateway-<pid>)
      --proxy-protocol           every connection starts with a PROXY protocol header (v1 or v2) from an
                                 L4 balancer, which names the client for limits and logs; others are closed
      --worker-header            name the worker in the upgrade's X-SecureChat-Worker header (tests,
                                 debugging; off by default: worker ids may name hosts)
    """ + "\n" + ProcessSupport.commonHelp

    static func main() async {
        let options = Options()
        ProcessSupport.helpIfAsked(options, help)
        Telemetry.bootstrap()
        let logger = ProcessSupport.bootstrapLogging(options: options, label: "securechat.gateway")
        let stateDir = options.string("state-dir", default: ".state")
        let host = options.string("host", default: "0.0.0.0")
        let port: Int, idle: Int, absolute: Int, requestTimeout: Double, pingSeconds: Double, maxQueued: Int, maxQueuedBytes: Int
        let flushCoalesceMs: Double, loops: Int, maxLogins: Int, linkTimeoutMs: Int
        let redisEndpoint: Endpoint, coordinatorEndpoints: [Endpoint]
        let limits: RateLimits
        let tls: NIOSSLContext
        let users: UsersStore
        let files: StaticFiles
        var fileLimits = FileLimits()
        do {
            try options.refuseUnknown(["allow-demo-users", "cert", "key", "host", "port", "id", "users-file", "web-dir", "public-origin",
                                       "flush-coalesce-ms", "max-logins-in-flight", "max-queued-bytes", "max-queued-frames",
                                       "ping-seconds", "proxy-protocol", "request-timeout-seconds", "worker-header", "event-loops",
                                       "max-file-bytes", "files-quota-bytes", "worker-link-timeout-ms"])
            fileLimits.maxBytes = try options.int("max-file-bytes", default: 10 << 20)
            fileLimits.quotaBytes = try options.int("files-quota-bytes", default: 1 << 30)
            guard fileLimits.maxBytes > 0, fileLimits.maxBytes <= 64 << 20, fileLimits.quotaBytes > 0 else {
                throw Options.Invalid("--max-file-bytes must be 1 to 64 MiB and --files-quota-bytes positive")
            }
            port = try options.int("port", default: 5001)
            requestTimeout = try options.double("request-timeout-seconds", default: 10)
            pingSeconds = try options.double("ping-seconds", default: 30)
            linkTimeoutMs = try options.int("worker-link-timeout-ms", default: 10_000)
            // At least a second: one lost SYN, or a busy loop, must not drop healthy links.
            guard (1000...600_000).contains(linkTimeoutMs) else { throw Options.Invalid("--worker-link-timeout-ms must be 1000...600000") }
            guard pingSeconds >= 0.1 else { throw Options.Invalid("--ping-seconds must be at least 0.1") }
            maxQueued = try options.int("max-queued-frames", default: 1024)
            maxQueuedBytes = try options.int("max-queued-bytes", default: 1 << 20)
            flushCoalesceMs = try options.double("flush-coalesce-ms", default: 10)
            loops = try options.eventLoops()
            maxLogins = try options.int("max-logins-in-flight", default: 4 * System.coreCount)
            guard maxLogins > 0 else { throw Options.Invalid("--max-logins-in-flight must be positive") }
            guard (0...100).contains(flushCoalesceMs) else { throw Options.Invalid("--flush-coalesce-ms must be 0...100") }
            guard maxQueued > 0, maxQueuedBytes >= ChatLimits.maxFrameBytes else {
                throw Options.Invalid("--max-queued-frames must be positive and --max-queued-bytes at least 65536")
            }
            idle = try options.int("session-idle-seconds", default: 12 * 3600)
            absolute = try options.int("session-max-seconds", default: 7 * 86400)
            redisEndpoint = try Endpoint(parsing: options.string("redis-url", default: "\(stateDir)/redis.sock"))
            coordinatorEndpoints = try Endpoint.list(parsing: options.string("coordinator", default: "\(stateDir)/coordinator.sock"))
            limits = try RateLimits(options: options)
            let certPath = options.string("cert", default: "\(stateDir)/tls/cert.pem")
            let keyPath = options.string("key", default: "\(stateDir)/tls/key.pem")
            var config = TLSConfiguration.makeServerConfiguration(
                certificateChain: try NIOSSLCertificate.fromPEMFile(certPath).map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: keyPath, format: .pem)))
            config.minimumTLSVersion = .tlsv12
            // TLS 1.2 only with forward-secret AEAD suites; TLS 1.3 suites are all AEAD.
            config.cipherSuites = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
            tls = try NIOSSLContext(configuration: config)
            users = try UsersStore(path: options.string("users-file", default: "users.json"),
                                   allowDemo: options.bool("allow-demo-users", default: false))
            files = try StaticFiles(directory: options.string("web-dir", default: "web"))
        } catch {
            ProcessSupport.fail("\(error)")
        }
        let origins = (options.string("public-origin") ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: loops)
        let pool = NIOThreadPool(numberOfThreads: max(1, System.coreCount))
        pool.start()
        let redisTLS: RedisTLS?
        do { redisTLS = try RedisTLS.from(options: options) } catch { ProcessSupport.fail("\(error)") }
        let locator: RedisLocator
        do { locator = try RedisLocator.from(options: options, fixed: redisEndpoint) } catch { ProcessSupport.fail("\(error)") }
        let redis = RedisClient(endpoint: redisEndpoint, password: options.string("redis-password"), user: options.string("redis-user"), tls: redisTLS, group: group, logger: logger, locator: locator)
        let coordinator = CoordinatorLink(endpoints: coordinatorEndpoints, secret: options.string("cluster-secret"), group: group, logger: logger)
        let directory = WorkerDirectory(link: coordinator, logger: logger)
        let gatewayID = options.string("id", default: "gateway-\(getpid())")
        let ctx = GatewayContext(
            sessions: SessionStore(redis: redis, idleSeconds: idle, absoluteSeconds: absolute),
            redis: redis, coordinator: coordinator,
            limiter: RateLimiterClient(link: coordinator, limits: limits, logger: logger),
            users: users, files: files, allowedOrigins: origins, threadPool: pool, logger: logger, maxBodyBytes: 16 * 1024, fileLimits: fileLimits,
            // Upload bodies in flight at once: eight of the largest.
            uploads: UploadGate(limit: 8 * fileLimits.maxBytes),
            requestTimeout: .milliseconds(Int64(requestTimeout * 1000)), directory: directory,
            connections: ConnectionRegistry(),
            links: GatewayLinks(group: group, gatewayID: gatewayID, auth: LinkAuth(secret: options.string("cluster-secret")), logger: logger,
                                flushDelay: .microseconds(Int64(flushCoalesceMs * 1000)),
                                pingInterval: .milliseconds(Int64(pingSeconds * 1000)),
                                linkTimeout: .milliseconds(Int64(linkTimeoutMs))),
            streamLimits: StreamLimits(maxQueuedFrames: maxQueued, maxQueuedBytes: maxQueuedBytes,
                                       pingInterval: .milliseconds(Int64(pingSeconds * 1000))),
            logins: LoginGate(limit: maxLogins),
            exposeWorkerHeader: options.bool("worker-header", default: false),
            proxyProtocol: options.bool("proxy-protocol", default: false)
        )
        logger.info("users loaded", metadata: ["users": "\(users.count)"])
        if !users.demoAccounts.isEmpty {
            logger.warning("DEMO: accounts with published passwords can log in; not for real use",
                           metadata: ["users": "\(users.demoAccounts.joined(separator: ","))"])
        }
        var services: [any Service] = [redis, coordinator, directory, CredentialSync(users: users, sessions: ctx.sessions, logger: logger), GatewayService(host: host, port: port, tls: tls, ctx: ctx, group: group, logger: logger)]
        do {
            if let metrics = try MetricsService(options: options, group: group, logger: logger) { services.append(metrics) }
        } catch {
            ProcessSupport.fail("\(error)")
        }
        if let watch = ParentWatch(options: options, logger: logger) { services.append(watch) }
        if locator.usesSentinels {
            services.append(SentinelWatcher(locator: locator, group: group, logger: logger) { redis.reconnect() })
        }
        let serviceGroup = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        do {
            try await serviceGroup.run()
        } catch {
            logger.error("gateway failed", metadata: ["error": "\(error)"])
            exit(1)
        }
        try? await pool.shutdownGracefully()
        try? await group.shutdownGracefully()
    }
}
