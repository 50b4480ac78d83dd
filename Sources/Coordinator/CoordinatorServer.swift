import ChatCore
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Proto
import ServiceLifecycle

/// The coordinator's shared state: the worker table, the rate limiter, and the
/// links of registered workers (to push presence events to).
final class CoordinatorCore: Sendable {
    struct State {
        var table: WorkerTable
        var limiter: GCRA
        /// Registered workers' links (presence goes to them).
        var links: [ObjectIdentifier: Channel] = [:]
        var workerLinks: [String: ObjectIdentifier] = [:]
        /// Every open link, registered or not (closed when this coordinator steps down).
        var allLinks: [ObjectIdentifier: Channel] = [:]
        /// Presence is authoritative once every live worker has had time to register again
        /// (workers retry the link at least every 0.5 s and register at once).
        var settledAt: Double
        var snapshotSent = false
        /// Active under this epoch until this moment (monotonic); nil while a standby.
        var leadership: (epoch: UInt64, until: Double)?
        /// Keys of the carried-over kinds changed since they were last written to Redis (at
        /// most `maxDirty`; beyond, a change is not carried over).
        var dirty: Set<String> = []
        /// The limiter of the last term, kept after a step-down: if the same epoch comes back
        /// (the lease was still ours in Redis), it continues exactly.
        var retained: (epoch: UInt64, limiter: GCRA)?

        func isActive(now: Double) -> Bool { leadership.map { now < $0.until } ?? false }
    }

    let state: NIOLockedValueBox<State>
    let logger: Logger
    let secret: String?
    let limits: RateLimits
    let leaseDuration: Double
    let maxSocketsPerUser: Int
    let settle: Double
    /// The limits whose state goes to Redis with each renewal, so that a successor continues
    /// them exactly: the login limits (few writes, and a spent burst would refuse every login
    /// for up to 12 s). The per-user ones refill within seconds: a successor counts them spent.
    static let carriedKinds: Set<RateLimitKind> = [.loginUser, .loginName, .loginAddress]
    static let maxDirty = 100_000

    /// `elected`: this coordinator serves only while it holds the lease (`activate`); without,
    /// it is the only one and always active, under epoch 0.
    init(limits: RateLimits, leaseDuration: Double, settle: Double, secret: String?, logger: Logger, maxSocketsPerUser: Int = .max,
         elected: Bool = false) {
        let now = Self.now()
        state = NIOLockedValueBox(State(table: WorkerTable(leaseDuration: leaseDuration, maxPerUser: maxSocketsPerUser), limiter: GCRA(limits: limits),
                                        settledAt: now + settle, leadership: elected ? nil : (0, .infinity)))
        self.secret = secret
        self.logger = logger
        self.limits = limits
        self.leaseDuration = leaseDuration
        self.maxSocketsPerUser = maxSocketsPerUser
        self.settle = settle
    }

    /// Holds the lease under `epoch` until `until`. A new epoch starts from nothing: no workers
    /// (they register as they find this coordinator) and presence settling anew. When another
    /// coordinator was active lately (`predecessor`: the last moment it may have served, by the
    /// wall clock: its last renewal plus the lease), every rate
    /// limit's burst counts as spent at the last moment it may have served (what it allowed is
    /// unknown), so the limits hold across the takeover; after a cold start they start full.
    func activate(epoch: UInt64, until: Double, predecessor: Double? = nil, carried: [(key: String, wall: Double)] = []) {
        let now = Self.now()
        // The last moment it may have served, on our monotonic clock (never later than now).
        let spentAt = predecessor.map { now - max(0, Date().timeIntervalSince1970 - $0) }
        let fresh = state.withLockedValue { s -> String? in
            if let l = s.leadership, l.epoch == epoch {
                s.leadership = (epoch, max(l.until, until))
                return nil
            }
            var how = spentAt == nil ? "full (no coordinator active lately)" : "bursts spent, login limits carried over (taking over)"
            s.table = WorkerTable(leaseDuration: leaseDuration, maxPerUser: maxSocketsPerUser)
            if let r = s.retained, r.epoch == epoch {
                // Our own term again: nobody else served in between.
                s.limiter = r.limiter
                how = "continued (the same term)"
            } else {
                s.limiter = GCRA(limits: limits, spentAt: spentAt, spentKinds: Set(RateLimitKind.allCases).subtracting(Self.carriedKinds))
                let wallNow = Date().timeIntervalSince1970
                for c in carried {
                    let tat = c.wall - wallNow + now
                    if tat > now { s.limiter.seed(fullKey: c.key, tat: tat) }
                }
                s.dirty = []
            }
            s.retained = nil
            s.links = [:]
            s.workerLinks = [:]
            s.settledAt = now + settle
            s.snapshotSent = false
            s.leadership = (epoch, until)
            return how
        }
        if let how = fresh {
            Telemetry.coordinatorActive.record(1)
            Telemetry.coordinatorEpoch.record(Int64(epoch))
            Telemetry.coordinatorTakeovers.increment()
            logger.notice("coordinator active", metadata: ["epoch": "\(epoch)", "wall_time": "\(Date().timeIntervalSince1970)",
                                                          "limits": "\(how)"])
        }
    }

    /// No longer active: every link is closed (clients go to the next coordinator) and the
    /// state is dropped.
    func deactivate(reason: String) {
        let links = state.withLockedValue { s -> [Channel] in
            guard let l = s.leadership else { return [] }
            s.retained = (l.epoch, s.limiter)
            s.leadership = nil
            s.links = [:]
            s.workerLinks = [:]
            s.table = WorkerTable(leaseDuration: leaseDuration, maxPerUser: maxSocketsPerUser)
            return Array(s.allLinks.values)
        }
        Telemetry.coordinatorActive.record(0)
        logger.notice("coordinator stepped down", metadata: ["reason": "\(reason)", "links_closed": "\(links.count)",
                                                            "wall_time": "\(Date().timeIntervalSince1970)"])
        for link in links { link.close(promise: nil) }
    }

    /// Up to `max` changed keys of the carried kinds with their state as wall-clock moments
    /// (0: no state left), taken off the list; `markDirty` puts them back if the write failed.
    func takeDirty(max: Int = 2000) -> [(key: String, wall: Double)] {
        let now = Self.now(), wallNow = Date().timeIntervalSince1970
        return state.withLockedValue { s in
            guard s.isActive(now: now), !s.dirty.isEmpty else { return [] }
            let keys = Array(s.dirty.prefix(max))
            s.dirty.subtract(keys)
            return keys.map { k in (k, s.limiter.tat(fullKey: k).map { $0 > now ? $0 - now + wallNow : 0 } ?? 0) }
        }
    }

    func markDirty(_ keys: [String]) {
        state.withLockedValue { s in
            if s.leadership != nil, s.dirty.count < Self.maxDirty { s.dirty.formUnion(keys.prefix(Self.maxDirty - s.dirty.count)) }
        }
    }

    func linkOpened(_ link: Channel) {
        state.withLockedValue { $0.allLinks[ObjectIdentifier(link)] = link }
    }

    /// Seconds on CLOCK_BOOTTIME: monotonic, and counting a suspended machine too (a lease
    /// must lapse by this clock while the host sleeps).
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    func handle(_ request: CoordinatorRequest, link: Channel) -> CoordinatorResponse {
        let now = Self.now()
        let linkID = ObjectIdentifier(link)
        var events: [Presence.Transition] = []
        var snapshotFor: Channel?
        let response: CoordinatorResponse = state.withLockedValue { s in
            // A standby, or a coordinator whose lease may have lapsed, answers nothing else.
            guard s.isActive(now: now), let epoch = s.leadership?.epoch else { return .standby }
            switch request {
            case .hello:
                return .leader(epoch: epoch)
            case .authBegin, .authFinish:
                return .ok
            case let .register(worker, address, connections):
                events = s.table.register(worker: worker, address: address, connections: connections, now: now)
                s.links[linkID] = link
                s.workerLinks[worker] = linkID
                if now >= s.settledAt { snapshotFor = link }
                logger.info("worker registered", metadata: ["worker.id": "\(worker)", "connections": "\(connections.count)"])
                return .ok
            case let .heartbeat(worker, _):
                return s.table.heartbeat(worker: worker, now: now) ? .ok : .unknownWorker
            case let .unregister(worker):
                s.table.setRoutable(worker: worker, false)
                logger.info("worker draining", metadata: ["worker.id": "\(worker)"])
                return .ok
            case let .connectionOpened(worker, connection):
                // Checked and counted under one lock: the cap is a take-or-refuse.
                if s.table.workers[worker] != nil, !s.table.mayOpen(worker: worker, connection: connection) {
                    return .denied
                }
                guard let e = s.table.opened(worker: worker, connection: connection) else { return .unknownWorker }
                events = e
                return .opened(online: s.table.presence.online)
            case let .connectionClosed(worker, connection):
                guard let e = s.table.closed(worker: worker, connection: connection) else { return .unknownWorker }
                events = e
                return .ok
            case let .route(exclude):
                guard let r = s.table.route(excluding: Set(exclude), now: now) else { return .noWorker }
                return .route(worker: r.id, address: r.address)
            case let .rateCheck(kind, key, consume):
                let d = s.limiter.check(kind: kind, key: key, now: now, consume: consume)
                if consume, d.allowed, Self.carriedKinds.contains(kind), s.dirty.count < Self.maxDirty { s.dirty.insert(GCRA.fullKey(kind, key)) }
                Telemetry.rateChecks(kind, allowed: d.allowed)?.increment()
                return .rate(allowed: d.allowed, retryAfterMs: Int((d.retryAfter * 1000).rounded(.up)))
            case let .rateRefund(kind, key):
                s.limiter.refund(kind: kind, key: key, now: now)
                if Self.carriedKinds.contains(kind), s.dirty.count < Self.maxDirty { s.dirty.insert(GCRA.fullKey(kind, key)) }
                return .ok
            case .status:
                return .status(workers: s.table.liveWorkerCount, online: s.table.presence.counts.count)
            case .listWorkers:
                return .workers(s.table.routableWorkers(now: now))
            }
        }
        publish(events)
        if let link = snapshotFor { sendSnapshot(to: [link]) }
        return response
    }

    /// Sends every user online to the given worker links (all of them when nil).
    func sendSnapshot(to targets: [Channel]? = nil) {
        let (links, online) = state.withLockedValue { (targets ?? Array($0.links.values), $0.table.presence.online) }
        for link in links {
            guard let buffer = try? CoordinatorCodec.encode(.presenceSnapshot(online: online), allocator: link.allocator) else { continue }
            link.writeAndFlush(buffer, promise: nil)
        }
    }

    /// Lease expiry and limiter pruning; runs on a timer.
    func tick() {
        let now = Self.now()
        let (expired, events, firstTime) = state.withLockedValue { s -> ([String], [Presence.Transition], Bool) in
            guard s.isActive(now: now) else { return ([], [], false) }
            let r = s.table.expire(now: now)
            Telemetry.usersOnline.record(s.table.presence.counts.count)
            Telemetry.workersLive.record(s.table.liveWorkerCount)
            for id in r.expired { s.workerLinks.removeValue(forKey: id) }
            if s.limiter.keyCount > 100_000 { s.limiter.prune(now: now) }
            let first = now >= s.settledAt && !s.snapshotSent
            if first { s.snapshotSent = true }
            return (r.expired, r.events, first)
        }
        for id in expired { logger.warning("worker lease lapsed; dropped", metadata: ["worker.id": "\(id)"]) }
        publish(events)
        // After a (re)start, once workers have had a lease period to re-register, presence is exact again:
        // workers diff it against what their clients were told.
        if firstTime {
            logger.info("presence settled; snapshot sent to workers")
            sendSnapshot()
        }
    }

    func linkClosed(_ link: Channel) {
        let id = ObjectIdentifier(link)
        state.withLockedValue { s in
            s.allLinks.removeValue(forKey: id)
            s.links.removeValue(forKey: id)
            for (worker, l) in s.workerLinks where l == id {
                // Probably dead: stop routing to it now; its presence goes when the lease lapses.
                s.table.setRoutable(worker: worker, false)
                s.workerLinks.removeValue(forKey: worker)
            }
        }
    }

    private func publish(_ events: [Presence.Transition]) {
        guard !events.isEmpty else { return }
        let links = state.withLockedValue { Array($0.links.values) }
        for e in events {
            let frame: CoordinatorFrame
            switch e {
            case let .cameOnline(u): frame = .presence(user: u, online: true)
            case let .wentOffline(u): frame = .presence(user: u, online: false)
            }
            for link in links {
                guard let buffer = try? CoordinatorCodec.encode(frame, allocator: link.allocator) else { continue }
                link.writeAndFlush(buffer, promise: nil)
            }
        }
    }
}

/// Until a link has proved the secret: at most `maxBytes` may arrive (a `hello` is small), and
/// within `deadline`, or the link is closed. Then it lets everything through.
final class PreAuthGuard: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    static let maxBytes = 4096
    static let deadline = TimeAmount.seconds(5)
    /// The link proved the secret (or none is configured): the one record of it.
    private(set) var lifted: Bool
    private var received = 0
    private var timer: Scheduled<Void>?

    init(lifted: Bool) {
        self.lifted = lifted
    }

    func lift() {
        lifted = true
        timer?.cancel()
    }

    func channelActive(context: ChannelHandlerContext) {
        if !lifted {
            let channel = context.channel
            timer = context.eventLoop.scheduleTask(in: Self.deadline) { channel.close(promise: nil) }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !lifted {
            received += unwrapInboundIn(data).readableBytes
            guard received <= Self.maxBytes else {
                context.close(promise: nil)
                return
            }
        }
        context.fireChannelRead(data)
    }
}

/// One inbound link (a worker or a gateway).
final class CoordinatorServerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let core: CoordinatorCore
    private let guardian: PreAuthGuard
    private let auth: LinkAuth
    /// Between `authBegin` and `authFinish`: both nonces.
    private var challenge: (client: [UInt8], mine: [UInt8])?

    init(core: CoordinatorCore, guardian: PreAuthGuard) {
        self.core = core
        self.guardian = guardian
        self.auth = LinkAuth(secret: core.secret)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case let .request(id, request)? = try? CoordinatorCodec.decode(unwrapInboundIn(data)) else {
            context.close(promise: nil)
            return
        }
        var response: CoordinatorResponse
        if case let .authBegin(nonce) = request {
            // Without a secret the proof is under an empty key: a client that has one sees it fail.
            if challenge == nil, nonce.count == LinkFrame.nonceBytes, let mine = try? LinkAuth.nonce() {
                challenge = (nonce, mine)
                response = .authChallenge(nonce: mine, proof: auth.coordinatorProof(clientNonce: nonce, coordinatorNonce: mine))
            } else {
                response = .denied
            }
        } else if case let .authFinish(proof) = request {
            if let c = challenge, auth.verify(proof, expected: auth.coordinatorClientProof(clientNonce: c.client, coordinatorNonce: c.mine)) {
                guardian.lift()
                response = .ok
            } else {
                response = .denied
            }
            challenge = nil
        } else if !guardian.lifted {
            response = .denied
        } else {
            response = core.handle(request, link: context.channel)
        }
        if let buffer = try? CoordinatorCodec.encode(.response(id: id, response), allocator: context.channel.allocator) {
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        }
        if response == .denied || response == .standby { context.close(promise: nil) }
    }

    func channelActive(context: ChannelHandlerContext) {
        core.linkOpened(context.channel)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        core.linkClosed(context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// Listens for coordinator links until graceful shutdown.
struct CoordinatorService: Service {
    let endpoint: Endpoint
    let core: CoordinatorCore
    let group: EventLoopGroup
    let logger: Logger

    func run() async throws {
        let core = self.core
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    let guardian = PreAuthGuard(lifted: core.secret == nil)
                    try ch.pipeline.syncOperations.addHandlers([
                        guardian,
                        ByteToMessageHandler(LengthPrefixedDecoder()),
                        CoordinatorServerHandler(core: core, guardian: guardian),
                    ])
                }
            }
        let server = try await bootstrap.bind(to: endpoint)
        logger.info("coordinator listening", metadata: ["listen": "\(endpoint)"])
        let ticker = group.next().scheduleRepeatedTask(initialDelay: .milliseconds(250), delay: .milliseconds(250)) { _ in
            core.tick()
        }
        try? await gracefulShutdown()
        ticker.cancel()
        try? await server.close()
        logger.info("coordinator stopped")
    }
}
