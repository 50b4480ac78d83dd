import ChatCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import Proto
import ServiceLifecycle

/// `securechat-worker`: serves the chat of the client streams gateways open on their links.
@main
enum WorkerMain {
    static let help = """
    usage: securechat-worker [flags]
    Serves the chat of the client streams gateways open on their links: session checks, frame
    validation, rate limits, storing in Redis, relay through pub/sub, fan-out.
      --id NAME                  the worker's identity (default worker-<pid>)
      --listen ADDR              socket path or host:port for gateway links (default <state-dir>/<id>.sock);
                                 TCP needs --cluster-secret. The socket also answers GET /healthz.
      --advertise ADDR           the address gateways are told (default: --listen)
      --history N                messages in welcome (default 50)
      --history-max N            messages kept per room (default 10000)
      --max-queued-frames N      live messages a stream may hold during a sync replay (default 1024)
      --redis-wait-replicas N    a message is acknowledged only once N replicas have it (WAIT; default 0:
                                 once the primary has it); past --redis-wait-ms, `unavailable`, and the
                                 client sends it again with the same ref (default 500)
      --redis-hold-ms N          a message with a ref whose store fails while Redis fails over or restarts
                                 is tried again for this long before it is answered `unavailable`;
                                 so are reads: a new stream's session check and welcome (past the
                                 hold it is closed 1013), sync and the catch-up after the welcome,
                                 history, rooms, directory, members
                                 (default 5000; 0: answered at once; at most 30000)
      --gateway-link-timeout-ms N  a gateway link silent this long is gone, with its streams (default
                                 15000, at least 1000; keep it at three or more of the gateways' pings,
                                 which come every fifth of their --worker-link-timeout-ms)
      --session-idle-seconds N, --session-max-seconds N   session lifetimes (default 43200, 604800)
      --admins A,B               deployment admins: remove members, change rooms and delete messages in
                                 any room but dms (default admin)
      --max-rooms-per-user N     rooms a user may be in (default 500)
      --room-creations-per-hour N  rooms a user may create in an hour (default 10)
      --max-private-members N    members of a private room (default 1000)
      --event-loops N            event-loop threads (default: one per core; the launcher gives each
                                 of its workers cores/workers)
    """ + "\n" + ProcessSupport.commonHelp

    static func main() async {
        let options = Options()
        ProcessSupport.helpIfAsked(options, help)
        Telemetry.bootstrap()
        let baseLogger = ProcessSupport.bootstrapLogging(options: options, label: "securechat.worker")
        let stateDir = options.string("state-dir", default: ".state")
        let workerID = options.string("id", default: "worker-\(getpid())")
        let listen: Endpoint, redisEndpoint: Endpoint, coordinatorEndpoints: [Endpoint]
        let limits: RateLimits
        let historyCount: Int, streamMax: Int, idle: Int, absolute: Int, maxQueued: Int, loops: Int, linkTimeoutMs: Int
        let waitReplicas: Int, waitMs: Int, holdMs: Int
        var roomLimits = RoomStore.Limits()
        do {
            try options.refuseUnknown(["advertise", "history", "history-max", "id", "listen", "max-queued-frames", "event-loops",
                                       "admins", "max-rooms-per-user", "room-creations-per-hour", "max-private-members",
                                       "gateway-link-timeout-ms", "redis-wait-replicas", "redis-wait-ms", "redis-hold-ms"])
            roomLimits.roomsPerUser = try options.int("max-rooms-per-user", default: 500)
            roomLimits.creationsPerHour = try options.int("room-creations-per-hour", default: 10)
            roomLimits.privateMembers = try options.int("max-private-members", default: 1000)
            guard roomLimits.roomsPerUser > 0, roomLimits.creationsPerHour >= 0, roomLimits.privateMembers > 1 else {
                throw Options.Invalid("--max-rooms-per-user must be positive, --max-private-members at least 2")
            }
            listen = try Endpoint(parsing: options.string("listen", default: "\(stateDir)/\(workerID).sock"))
            if case .tcp = listen, options.string("cluster-secret") == nil {
                // On TCP anyone who reaches the port could open streams: the links must prove a secret.
                throw Options.Invalid("--listen on TCP needs --cluster-secret (or SECURECHAT_CLUSTER_SECRET)")
            }
            redisEndpoint = try Endpoint(parsing: options.string("redis-url", default: "\(stateDir)/redis.sock"))
            coordinatorEndpoints = try Endpoint.list(parsing: options.string("coordinator", default: "\(stateDir)/coordinator.sock"))
            limits = try RateLimits(options: options)
            historyCount = try options.int("history", default: 50)
            streamMax = try options.int("history-max", default: 10_000)
            idle = try options.int("session-idle-seconds", default: 12 * 3600)
            absolute = try options.int("session-max-seconds", default: 7 * 86400)
            maxQueued = try options.int("max-queued-frames", default: 1024)
            linkTimeoutMs = try options.int("gateway-link-timeout-ms", default: 15_000)
            waitReplicas = try options.int("redis-wait-replicas", default: 0)
            waitMs = try options.int("redis-wait-ms", default: 500)
            guard (0...16).contains(waitReplicas), (1...2_000).contains(waitMs) else {
                // Below the 5 s command timeout, with room for a few waits queued behind each other.
                throw Options.Invalid("--redis-wait-replicas must be 0...16 and --redis-wait-ms 1...2000")
            }
            holdMs = try options.int("redis-hold-ms", default: 5_000)
            guard (0...30_000).contains(holdMs) else { throw Options.Invalid("--redis-hold-ms must be 0...30000") }
            guard (1000...600_000).contains(linkTimeoutMs) else { throw Options.Invalid("--gateway-link-timeout-ms must be 1000...600000") }
            loops = try options.eventLoops()
            guard (1...1000).contains(historyCount), streamMax >= historyCount, maxQueued > 0 else {
                throw Options.Invalid("--history must be 1...1000 and no more than --history-max")
            }
        } catch {
            ProcessSupport.fail("\(error)")
        }
        let advertise = options.string("advertise", default: listen.description)
        var log = baseLogger
        log[metadataKey: "worker.id"] = "\(workerID)"
        let logger = log

        let group = MultiThreadedEventLoopGroup(numberOfThreads: loops)
        let redisTLS: RedisTLS?
        do { redisTLS = try RedisTLS.from(options: options) } catch { ProcessSupport.fail("\(error)") }
        let locator: RedisLocator
        do { locator = try RedisLocator.from(options: options, fixed: redisEndpoint) } catch { ProcessSupport.fail("\(error)") }
        let redis = RedisClient(endpoint: redisEndpoint, password: options.string("redis-password"), user: options.string("redis-user"), tls: redisTLS, group: group, logger: logger, locator: locator)
        let admins = Set(options.string("admins", default: "admin").split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        var rooms = RoomStore(redis: redis, streamMax: streamMax, limits: roomLimits, admins: admins)
        rooms.waitReplicas = waitReplicas
        rooms.waitMs = waitMs
        rooms.holdMs = holdMs
        // Appends that wait for replicas get a connection of their own: Redis runs nothing after
        // a blocked WAIT on its connection, and the sessions, history and joins must not wait.
        let durable = waitReplicas > 0
            ? RedisClient(endpoint: redisEndpoint, password: options.string("redis-password"), user: options.string("redis-user"), tls: redisTLS,
                          group: group, logger: logger, locator: locator)
            : nil
        rooms.durable = durable
        let hub = Hub(group: group, store: rooms, logger: logger)
        let readiness = WorkerReadiness(isRelaying: { hub.isRelaying },
                                        storeUp: { redis.isEstablished && (durable?.isEstablished ?? true) })
        let coordinator = CoordinatorLink(
            endpoints: coordinatorEndpoints, secret: options.string("cluster-secret"), group: group, logger: logger,
            onEvent: { frame in
                switch frame {
                case let .presence(user, online): hub.presence(user: user, online: online)
                case let .presenceSnapshot(online): hub.presenceSnapshot(online)
                default: break
                }
            },
            onConnect: { _ in readiness.linkReconnected() }
        )
        let ctx = WorkerContext(
            workerID: workerID, hub: hub,
            rooms: rooms, devices: DeviceStore(redis: redis), historyCount: historyCount,
            limiter: RateLimiterClient(link: coordinator, limits: limits, logger: logger),
            coordinator: coordinator, logger: logger, maxHeldFrames: maxQueued,
            sessions: SessionStore(redis: redis, idleSeconds: idle, absoluteSeconds: absolute),
            auth: LinkAuth(secret: options.string("cluster-secret")),
            linkTimeout: .milliseconds(Int64(linkTimeoutMs))
        )
        let roomPrefix = RoomStore.roomChannelPrefix, userPrefix = RoomStore.userChannelPrefix
        let subscriber = RedisSubscriber(
            endpoint: redisEndpoint, password: options.string("redis-password"), user: options.string("redis-user"), tls: redisTLS,
            channels: [SessionStore.logoutChannel, SessionStore.credentialsChannel, DeviceStore.devicesChannel], group: group, logger: logger,
            onMessage: { channel, payload in
                if channel.hasPrefix(roomPrefix) {
                    let room = String(channel.dropFirst(roomPrefix.count))
                    if let event = RoomRelay(payload: payload, room: room) { hub.deliver(room: room, event) }
                } else if channel.hasPrefix(userPrefix) {
                    if let event = UserRelay(payload: payload) { hub.deliverUser(String(channel.dropFirst(userPrefix.count)), event) }
                } else if channel == DeviceStore.devicesChannel {
                    // Everyone shares the lobby with everyone: every stream hears of it.
                    hub.devicesChanged(user: payload)
                } else if channel == SessionStore.logoutChannel {
                    hub.closeSessions(hash: payload, code: 4001)
                } else if channel == SessionStore.credentialsChannel {
                    // The user was removed or changed password: every session made before is gone.
                    hub.closeUser(payload, code: 4001)
                }
            },
            onSubscribed: { channel in hub.channelSubscribed(channel) },
            onState: { up in
                if up { hub.subscriptionRestored() } else { hub.subscriptionLost() }
            },
            locator: locator
        )
        hub.attach(subscriber)
        // Started in this order, stopped in reverse: the server drains first, Redis goes last.
        var services: [any Service] = [
            redis, subscriber, coordinator,
            HeartbeatService(ctx: ctx, advertise: advertise, readiness: readiness),
            WorkerService(listen: listen, ctx: ctx, readiness: readiness, group: group, logger: logger, drainBatch: 50),
        ]
        if let durable { services.insert(durable, at: 1) }
        do {
            if let metrics = try MetricsService(options: options, group: group, logger: logger) { services.append(metrics) }
        } catch {
            ProcessSupport.fail("\(error)")
        }
        if let watch = ParentWatch(options: options, logger: logger) { services.append(watch) }
        if locator.usesSentinels {
            services.append(SentinelWatcher(locator: locator, group: group, logger: logger) {
                redis.reconnect()
                durable?.reconnect()
                subscriber.reconnect()
            })
        }
        let serviceGroup = ServiceGroup(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        do {
            try await serviceGroup.run()
        } catch {
            logger.error("worker failed", metadata: ["error": "\(error)"])
            try? await group.shutdownGracefully()
            exit(1)
        }
        try? await group.shutdownGracefully()
    }
}
