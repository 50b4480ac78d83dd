import ChatCore
import Foundation
import Logging
import NIOPosix
import ServiceLifecycle

/// `securechat-coordinator`: worker leases, routing, presence and global rate limits.
@main
enum CoordinatorMain {
    static let help = """
    usage: securechat-coordinator [flags]
    Worker leases and routing, presence across workers, global rate limits (each an atomic
    take-or-refuse). It listens on --coordinator.
      --lease-seconds S          a worker without a heartbeat this long is dropped (default 3)
      --settle-seconds S         after a (re)start, when presence counts as complete (default 1.5)
      --max-sockets-per-user N   WebSockets one user may have open at once (default 20; beyond, close 4009)
      --listen ADDR              where to listen (default: --coordinator)
      --leader-lease-ms MS       run as one of several coordinators: serve only while holding a lease in
                                 Redis (--redis-url or --redis-sentinels) of this length, renewed every
                                 quarter; the others stand by and take over when it lapses (default 0:
                                 the only coordinator, no election). 500...60000
      --id NAME                  this coordinator's name in logs and in the lease (default coordinator-<pid>)
      --redis-wait-replicas N    count a lease taken or renewed only once N replicas have it (WAIT), so a
                                 Redis failover cannot hand out an older copy (default 0)
      --redis-wait-ms MS         how long that WAIT may take (default 500)
    """ + "\n" + ProcessSupport.commonHelp

    static func main() async {
        let options = Options()
        ProcessSupport.helpIfAsked(options, help)
        Telemetry.bootstrap()
        var log = ProcessSupport.bootstrapLogging(options: options, label: "securechat.coordinator")
        if let id = options.string("id") { log[metadataKey: "coordinator.id"] = "\(id)" }
        let logger = log
        let endpoint: Endpoint
        let limits: RateLimits
        let lease: Double, settle: Double, maxSockets: Int, leaderLeaseMs: Int, waitReplicas: Int, waitMs: Int
        let redisEndpoint: Endpoint, locator: RedisLocator, redisTLS: RedisTLS?, holder: String
        do {
            try options.refuseUnknown(["lease-seconds", "settle-seconds", "max-sockets-per-user", "listen", "leader-lease-ms", "id",
                                       "redis-wait-replicas", "redis-wait-ms"])
            let stateDir = options.string("state-dir", default: ".state")
            endpoint = try Endpoint(parsing: options.string("listen") ?? options.string("coordinator", default: stateDir + "/coordinator.sock"))
            leaderLeaseMs = try options.int("leader-lease-ms", default: 0)
            guard leaderLeaseMs == 0 || (500...60_000).contains(leaderLeaseMs) else { throw Options.Invalid("--leader-lease-ms must be 0 or 500...60000") }
            waitReplicas = try options.int("redis-wait-replicas", default: 0)
            waitMs = try options.int("redis-wait-ms", default: 500)
            guard (0...16).contains(waitReplicas), (1...2_000).contains(waitMs) else {
                throw Options.Invalid("--redis-wait-replicas must be 0...16 and --redis-wait-ms 1...2000")
            }
            redisEndpoint = try Endpoint(parsing: options.string("redis-url", default: "\(stateDir)/redis.sock"))
            locator = try RedisLocator.from(options: options, fixed: redisEndpoint)
            redisTLS = try RedisTLS.from(options: options)
            let id = options.string("id", default: "coordinator-\(getpid())")
            guard (1...64).contains(id.utf8.count), id.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) || "._:-".unicodeScalars.contains($0) }) else {
                throw Options.Invalid("--id must be 1 to 64 letters, digits, '.', '_', ':' or '-'")
            }
            guard leaderLeaseMs == 0 || waitMs * 2 < leaderLeaseMs else {
                throw Options.Invalid("--redis-wait-ms must be under half of --leader-lease-ms (a renewal must be answered in time to count)")
            }
            // Unique per start: a restarted coordinator does not inherit its old lease.
            holder = id + "/" + String(try Crypto.newToken().prefix(12))
            limits = try RateLimits(options: options)
            lease = try options.double("lease-seconds", default: 3)
            settle = try options.double("settle-seconds", default: 1.5)
            maxSockets = try options.int("max-sockets-per-user", default: 20)
            guard maxSockets > 0 else { throw Options.Invalid("--max-sockets-per-user must be positive") }
        } catch {
            ProcessSupport.fail("\(error)")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let elected = leaderLeaseMs > 0
        let core = CoordinatorCore(limits: limits, leaseDuration: lease, settle: settle, secret: options.string("cluster-secret"), logger: logger,
                                   maxSocketsPerUser: maxSockets, elected: elected)
        var services: [any Service] = []
        if elected {
            // Started before the listener and stopped after it: the lease is released last but one.
            let redis = RedisClient(endpoint: redisEndpoint, password: options.string("redis-password"), user: options.string("redis-user"),
                                    tls: redisTLS, group: group, logger: logger, commandTimeout: .milliseconds(Int64(leaderLeaseMs)), locator: locator)
            services.append(redis)
            if locator.usesSentinels {
                services.append(SentinelWatcher(locator: locator, group: group, logger: logger) { redis.reconnect() })
            }
            services.append(ElectionService(redis: redis, core: core, lease: LeaderLease(ttl: Double(leaderLeaseMs) / 1000), holder: holder,
                                            waitReplicas: waitReplicas, waitMs: waitMs, logger: logger))
        }
        services.append(CoordinatorService(endpoint: endpoint, core: core, group: group, logger: logger))
        do {
            if let metrics = try MetricsService(options: options, group: group, logger: logger) { services.append(metrics) }
        } catch {
            ProcessSupport.fail("\(error)")
        }
        if let watch = ParentWatch(options: options, logger: logger) { services.append(watch) }
        let serviceGroup = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        do {
            try await serviceGroup.run()
        } catch {
            logger.error("coordinator failed", metadata: ["error": "\(error)"])
            try? await group.shutdownGracefully()
            ProcessSupport.fail("\(error)")
        }
        try? await group.shutdownGracefully()
    }
}
