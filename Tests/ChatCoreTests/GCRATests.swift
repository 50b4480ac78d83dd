import ChatCore
import NIOCore
import Testing

@Suite struct GCRATests {
    @Test func burstThenSteadyRate() {
        var g = GCRA(limits: RateLimits())
        let burst = (0..<5).map { _ in g.check(kind: .message, key: "amy", now: 100).allowed }
        #expect(burst == [true, true, true, true, true])
        let denied = g.check(kind: .message, key: "amy", now: 100)
        #expect(!denied.allowed)
        #expect(abs(denied.retryAfter - 1) < 1e-9)
        let later = [g.check(kind: .message, key: "amy", now: 100.5).allowed,
                     g.check(kind: .message, key: "amy", now: 101).allowed,
                     g.check(kind: .message, key: "amy", now: 101).allowed,
                     // Other keys and kinds are independent.
                     g.check(kind: .message, key: "bo", now: 101).allowed,
                     g.check(kind: .loginUser, key: "amy", now: 101).allowed]
        #expect(later == [false, true, false, true, true])
    }

    @Test func peekDoesNotSpend() {
        var g = GCRA(limits: RateLimits())
        let peeks = (0..<10).map { _ in g.check(kind: .loginUser, key: "x", now: 0, consume: false).allowed }
        #expect(!peeks.contains(false))
        let spends = (0..<5).map { _ in g.check(kind: .loginUser, key: "x", now: 0).allowed }
        #expect(!spends.contains(false))
        let sixth = g.check(kind: .loginUser, key: "x", now: 0, consume: false)
        #expect(!sixth.allowed && abs(sixth.retryAfter - 12) < 1e-9)
    }

    @Test func pruneForgetsOnlyIdleKeys() {
        var g = GCRA(limits: RateLimits())
        _ = g.check(kind: .message, key: "old", now: 0)
        _ = g.check(kind: .message, key: "new", now: 10)
        g.prune(now: 10.5)
        #expect(g.keyCount == 1)
    }

    @Test func keyTableIsBounded() {
        var g = GCRA(limits: RateLimits(), maxKeys: 100)
        for i in 0..<1000 { _ = g.check(kind: .loginAddress, key: "k\(i)", now: 0) }
        #expect(g.keyCount <= 100)
    }

    @Test func limitsFromOptions() throws {
        let l = try RateLimits(options: Options(arguments: ["--msg-burst", "10", "--msg-per-second", "4", "--login-user-per-minute", "3"], environment: [:]))
        #expect(l.message == RateLimit(burst: 10, interval: 0.25))
        #expect(l.loginUser == RateLimit(burst: 3, interval: 20))
        #expect(l.loginAddress == RateLimit(burst: 20, interval: 3))
        #expect(throws: Options.Invalid.self) { try RateLimits(options: Options(arguments: ["--msg-burst", "zero"], environment: [:])) }
    }
}

@Suite struct OptionsTests {
    @Test func flagsBeatEnvironmentBeatDefaults() throws {
        let o = Options(arguments: ["run", "--port", "6000", "--workers=3", "--verbose"],
                        environment: ["SECURECHAT_PORT": "7000", "SECURECHAT_STATE_DIR": "/s"])
        #expect(o.positional == ["run"])
        #expect(try o.int("port", default: 5001) == 6000)
        #expect(try o.int("workers", default: 2) == 3)
        #expect(o.string("state-dir") == "/s")
        #expect(o.bool("verbose", default: false))
        #expect(try o.int("missing", default: 9) == 9)
        #expect(Options.environmentName("redis-url") == "SECURECHAT_REDIS_URL")
    }

    @Test func endpoints() throws {
        #expect(try Endpoint(parsing: "/tmp/r.sock") == .unix(path: "/tmp/r.sock"))
        #expect(try Endpoint(parsing: "unix:///tmp/r.sock") == .unix(path: "/tmp/r.sock"))
        #expect(try Endpoint(parsing: "redis://10.0.0.5:6380/0") == .tcp(host: "10.0.0.5", port: 6380))
        #expect(try Endpoint(parsing: "[::1]:7000") == .tcp(host: "::1", port: 7000))
        #expect(throws: Options.Invalid.self) { try Endpoint(parsing: "nonsense") }
    }
}

@Suite struct GCRARefundTests {
    @Test func aRefundGivesBackExactlyOneCell() {
        var limits = RateLimits()
        limits.loginUser = RateLimit(burst: 2, interval: 30)
        var g = GCRA(limits: limits)
        #expect(g.check(kind: .loginUser, key: "bob", now: 0).allowed)
        #expect(g.check(kind: .loginUser, key: "bob", now: 0).allowed)
        #expect(!g.check(kind: .loginUser, key: "bob", now: 0).allowed)
        g.refund(kind: .loginUser, key: "bob", now: 0)
        #expect(g.check(kind: .loginUser, key: "bob", now: 0).allowed)
        #expect(!g.check(kind: .loginUser, key: "bob", now: 0).allowed)
    }

    @Test func refundsNeverGoBelowAFreshKey() {
        var limits = RateLimits()
        limits.loginUser = RateLimit(burst: 2, interval: 30)
        var g = GCRA(limits: limits)
        #expect(g.check(kind: .loginUser, key: "bob", now: 0).allowed)
        for _ in 0..<5 { g.refund(kind: .loginUser, key: "bob", now: 0) }
        g.refund(kind: .loginUser, key: "never-seen", now: 0)
        #expect(g.keyCount == 0)
        // Still a burst of 2, not 2 plus the refunds.
        #expect(g.check(kind: .loginUser, key: "bob", now: 0).allowed)
        #expect(g.check(kind: .loginUser, key: "bob", now: 0).allowed)
        #expect(!g.check(kind: .loginUser, key: "bob", now: 0).allowed)
    }
}

@Suite struct BackoffTests {
    @Test func growsToCapAndResets() {
        var b = Backoff(base: 0.1, cap: 1)
        let delays = (0..<6).map { _ in b.next(random: 1) }
        #expect(delays == [0.1, 0.2, 0.4, 0.8, 1, 1])
        b.reset()
        #expect(b.next(random: 0) == 0.05)
    }
}

@Suite struct ClientAddressTests {
    @Test func ipv6CountsByItsSlash64AndMappedIPv4AsIPv4() throws {
        let a = try SocketAddress(ipAddress: "2001:db8:aa:bb:1:2:3:4", port: 1)
        let b = try SocketAddress(ipAddress: "2001:db8:aa:bb:ffff:ffff:ffff:ffff", port: 2)
        let c = try SocketAddress(ipAddress: "2001:db8:aa:bc::1", port: 1)
        #expect(ClientAddress.rateKey(a) == "2001:db8:aa:bb::/64")
        #expect(ClientAddress.rateKey(a) == ClientAddress.rateKey(b), "one /64, one key")
        #expect(ClientAddress.rateKey(c) != ClientAddress.rateKey(a))
        #expect(ClientAddress.rateKey(try SocketAddress(ipAddress: "::ffff:192.0.2.7", port: 1)) == "192.0.2.7")
        #expect(ClientAddress.rateKey(try SocketAddress(ipAddress: "192.0.2.7", port: 1)) == "192.0.2.7")
        #expect(ClientAddress.rateKey(nil) == "unknown")
    }
}

@Suite struct GCRATakeoverTests {
    func limits() -> RateLimits {
        var l = RateLimits()
        l.message = RateLimit(burst: 5, interval: 1)
        return l
    }

    @Test func aCoordinatorThatTakesOverCountsEveryBurstAsSpent() {
        var g = GCRA(limits: limits(), spentAt: 100)
        // At the takeover nobody gets a burst: the predecessor may have just allowed it.
        #expect(!g.check(kind: .message, key: "u", now: 100).allowed)
        #expect(g.check(kind: .message, key: "u", now: 100).retryAfter == 1)
        // It refills at the rate: one a second.
        #expect(g.check(kind: .message, key: "u", now: 101).allowed)
        #expect(!g.check(kind: .message, key: "u", now: 101.5).allowed)
        // A burst after the takeover it is as if nothing had happened.
        #expect((0..<5).map { _ in g.check(kind: .message, key: "v", now: 105).allowed } == [true, true, true, true, true])
        #expect(!g.check(kind: .message, key: "v", now: 105).allowed)
    }

    @Test func theLimitHoldsOverATakeover() {
        // Whatever the predecessor allowed in [0, 10], its successor from 10 on allows no more
        // than the rate: over any window the total stays within burst + rate × time.
        var before = GCRA(limits: limits())
        var after = GCRA(limits: limits(), spentAt: 10)
        var allowed: [Double] = []
        var t = 0.0
        while t < 30 {
            var g = t < 10 ? before : after
            if g.check(kind: .message, key: "u", now: t).allowed { allowed.append(t) }
            if t < 10 { before = g } else { after = g }
            t += 0.05
        }
        for start in stride(from: 0.0, to: 30, by: 0.5) {
            for end in stride(from: start + 0.5, through: 30, by: 0.5) {
                let n = allowed.filter { $0 >= start && $0 < end }.count
                #expect(Double(n) <= 5 + (end - start) + 1e-9, "\(n) in [\(start), \(end))")
            }
        }
    }

    @Test func recordedCellsAreTheShadowAFallbackStartsFrom() {
        var local = GCRA(limits: limits())
        // The coordinator allowed 5 through this process at 0: the local state knows.
        for _ in 0..<5 { local.record(kind: .message, key: "u", now: 0) }
        #expect(!local.check(kind: .message, key: "u", now: 0.5).allowed)
        #expect(local.check(kind: .message, key: "u", now: 1).allowed)
    }
}
