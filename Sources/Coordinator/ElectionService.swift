import ChatCore
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Proto
import ServiceLifecycle

/// Runs `LeaderLease` against Redis for a coordinator started with `--leader-lease-ms`: one
/// active coordinator at a time, the others standing by. It ticks every 50 ms; the attempts
/// run as futures, so a Redis that hangs never delays the step-down.
final class ElectionService: Service, Sendable {
    static let leaseKey = "sc:coordinator:lease"
    static let epochKey = "sc:coordinator:epoch"
    /// When the active coordinator last renewed (its wall clock, ms), kept for as long as a rate
    /// limit takes to refill: a successor knows whether, and how recently, one was active.
    static let lastKey = "sc:coordinator:last"
    /// The login limits' state (member `kind:key`, score the wall-clock ms its bucket is full
    /// again), written with each renewal for a successor to continue from.
    static let limitsKey = "sc:coordinator:limits"

    /// Takes the lease if free, renews it if ours (writing the changed limits, ARGV[6...] as
    /// score/member pairs, score 0 to remove). A new epoch is the counter plus one, or the
    /// wall-clock ms if that is more: epochs keep growing even if Redis lost the counter in a
    /// failover. Answers {epoch, when a holder may last have served or "", the limits left}
    /// for a fresh lease or when asked (ARGV[5] = "1": we are not active), {epoch, "", {}} for
    /// a renewal, {0, "", {}} when another holds it. The limits come most-spent first, 20,000
    /// at most.
    static let acquire = RedisScript("""
    local function carried(last)
      if last == '' then return {} end
      return redis.call('ZREVRANGEBYSCORE', KEYS[4], '+inf', ARGV[3], 'WITHSCORES', 'LIMIT', 0, 20000)
    end
    local cur = redis.call('GET', KEYS[1])
    if not cur then
      local e = math.max(redis.call('INCR', KEYS[2]), tonumber(ARGV[3]))
      redis.call('SET', KEYS[2], string.format('%d', e))
      local last = redis.call('GET', KEYS[3]) or ''
      redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. string.format('%d', e), 'PX', ARGV[2])
      redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
      return {e, last, carried(last)}
    end
    local sp = string.find(cur, ' ', 1, true)
    if sp and string.sub(cur, 1, sp - 1) == ARGV[1] then
      local last = ''
      if ARGV[5] == '1' then last = redis.call('GET', KEYS[3]) or '' end
      redis.call('PEXPIRE', KEYS[1], ARGV[2])
      redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
      local left = {}
      if ARGV[5] == '1' then left = carried(last) end
      for i = 6, #ARGV, 2 do
        if tonumber(ARGV[i]) > 0 then
          redis.call('ZADD', KEYS[4], ARGV[i], ARGV[i + 1])
        else
          redis.call('ZREM', KEYS[4], ARGV[i + 1])
        end
      end
      redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[3])
      redis.call('PEXPIRE', KEYS[4], ARGV[4])
      return {tonumber(string.sub(cur, sp + 1)), last, left}
    end
    return {0, '', {}}
    """)

    /// Lets the lease go if it is still ours (a clean stop: the standby need not wait it out).
    static let release = RedisScript("""
    local cur = redis.call('GET', KEYS[1])
    if cur and string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
      redis.call('DEL', KEYS[1])
      return 1
    end
    return 0
    """)

    let redis: RedisClient
    let core: CoordinatorCore
    let logger: Logger
    /// Unique per process start: the lease's holder.
    let holder: String
    let waitReplicas: Int
    let waitMs: Int
    /// The lease's length, and as Redis takes it.
    let ttl: Double
    let ttlMs: String
    /// How long `lastKey` is kept: the longest a rate limit takes to refill from empty.
    let refillMs: String
    private let lease: NIOLockedValueBox<LeaderLease>

    init(redis: RedisClient, core: CoordinatorCore, lease: LeaderLease, holder: String, waitReplicas: Int, waitMs: Int, logger: Logger) {
        let limits = core.limits
        let refill = RateLimitKind.allCases.map { Double(limits[$0].burst) * limits[$0].interval }.max() ?? 60
        self.refillMs = String(Int((refill + lease.ttl) * 1000) + 1)
        self.redis = redis
        self.core = core
        self.lease = NIOLockedValueBox(lease)
        self.ttl = lease.ttl
        self.ttlMs = String(Int(lease.ttl * 1000))
        self.holder = holder
        self.waitReplicas = waitReplicas
        self.waitMs = waitMs
        self.logger = logger
    }

    func run() async throws {
        logger.info("coordinator standing for election", metadata: ["holder": "\(holder)", "lease_ms": "\(ttlMs)"])
        Telemetry.coordinatorActive.record(0)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            step { $0.tick(now: CoordinatorCore.now()) }
            try? await Task.sleep(for: .milliseconds(50))
        }
        // Stop serving first, then hand the lease back so a standby takes over at once.
        step { $0.resign() }
        _ = try? await redis.evalScript(Self.release, keys: [Self.leaseKey], args: [holder])
        logger.info("coordinator lease released")
    }

    /// Applies one event to the lease and carries out what it returns, under the lease's lock
    /// (so activation and step-down reach the core in the order they were decided).
    /// `predecessor`: the last moment the previous holder may have served (wall clock, seconds),
    /// if that was recent; told to the core when this answer makes us active.
    private func step(predecessor: Double? = nil, carried: [(key: String, wall: Double)] = [], _ event: (inout LeaderLease) -> [LeaderLease.Action]) {
        let due = lease.withLockedValue { l -> Bool in
            let actions = event(&l)
            for action in actions {
                if case let .steppedDown(reason) = action { core.deactivate(reason: "\(reason)") }
            }
            if let epoch = l.epoch { core.activate(epoch: epoch, until: l.until, predecessor: predecessor, carried: carried) }
            return actions.contains(.attempt)
        }
        if due { attempt() }
    }

    private func attempt() {
        guard let pinned = redis.currentChannel() else {
            let now = CoordinatorCore.now()
            step { $0.failed(now: now) }
            return
        }
        let loop = pinned.eventLoop
        let waitReplicas = waitReplicas, waitMs = waitMs, ttlMs = ttlMs, ttl = ttl
        let wallMs = String(Int(Date().timeIntervalSince1970 * 1000))
        let dirty = core.takeDirty()
        let changed = dirty.flatMap { [String(Int($0.wall * 1000)), $0.key] }
        // Not active now: if the lease turns out to be still ours, we want what it left too.
        let wantState = lease.withLockedValue { $0.epoch == nil } ? "1" : "0"
        redis.evalScriptFuture(Self.acquire, keys: [Self.leaseKey, Self.epochKey, Self.lastKey, Self.limitsKey],
                               args: [holder, ttlMs, wallMs, refillMs, wantState] + changed, on: loop, pinned: pinned)
            .flatMap { reply -> EventLoopFuture<(UInt64?, Double?, [(key: String, wall: Double)])> in
                guard let parts = reply.array, parts.count == 3, let n = parts[0].int, n >= 0 else {
                    return loop.makeFailedFuture(RedisError.unexpectedReply)
                }
                let epoch: UInt64? = n == 0 ? nil : UInt64(n)
                let last = parts[1].string.flatMap(Double.init).map { $0 / 1000 }
                let flat = parts[2].array ?? []
                var carried: [(key: String, wall: Double)] = []
                var i = 0
                while i + 1 < flat.count {
                    if let key = flat[i].string, let ms = flat[i + 1].string.flatMap(Double.init) { carried.append((key, ms / 1000)) }
                    i += 2
                }
                let found = carried
                guard waitReplicas > 0, epoch != nil else { return loop.makeSucceededFuture((epoch, last, found)) }
                // The lease counts only once a replica has it: a failover must not hand an
                // older copy of it to the next primary.
                return self.redis.sendChecked(["WAIT", String(waitReplicas), String(waitMs)], on: loop, pinned: pinned).flatMapThrowing { acks in
                    guard let got = acks.int, got >= waitReplicas else { throw RedisError.notReplicated }
                    return (epoch, last, found)
                }
            }
            .whenComplete { result in
                let now = CoordinatorCore.now()
                switch result {
                case let .success((epoch, last, carried)):
                    // It may have served until its last renewal plus the lease.
                    self.step(predecessor: last.map { $0 + ttl }, carried: carried) { $0.answered(epoch: epoch, now: now) }
                case .failure:
                    // Written again with the next renewal (with their state as it is then).
                    self.core.markDirty(dirty.map(\.key))
                    self.step { $0.failed(now: now) }
                }
            }
    }
}
