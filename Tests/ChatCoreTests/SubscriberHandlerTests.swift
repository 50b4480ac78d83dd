import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import ChatCore

/// The subscriber reads every reply: an error (a refused AUTH, a refused SUBSCRIBE) closes
/// the connection so that it retries and says why, instead of waiting on a dead subscription.
@Suite struct SubscriberHandlerTests {
    final class Seen: Sendable {
        let errors = NIOLockedValueBox<[String]>([])
        let messages = NIOLockedValueBox<[String]>([])
        let subscribed = NIOLockedValueBox<[String]>([])
    }

    func channel(_ seen: Seen, checkRole: Bool = false) throws -> EmbeddedChannel {
        let handler = SubscriberHandler(
            onMessage: { channel, payload in seen.messages.withLockedValue { $0.append(channel + "=" + payload) } },
            onSubscribed: { n in seen.subscribed.withLockedValue { $0.append(n) } },
            onError: { e in seen.errors.withLockedValue { $0.append(e) } }, checkRole: checkRole)
        let ch = EmbeddedChannel(handler: handler)
        try ch.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        return ch
    }

    @Test func refusedAuthClosesTheConnection() throws {
        let seen = Seen()
        let ch = try channel(seen)
        try ch.writeInbound(RESPValue.error("WRONGPASS invalid username-password pair"))
        #expect(seen.errors.withLockedValue { $0 } == ["WRONGPASS invalid username-password pair"])
        #expect(!ch.isActive)
    }

    @Test func acceptedAuthThenSubscriptionsAndMessages() throws {
        let seen = Seen()
        let ch = try channel(seen)
        try ch.writeInbound(RESPValue.simple("OK"))
        try ch.writeInbound(RESPValue.array([.bulk("subscribe"), .bulk("sc:room:lobby"), .integer(1)]))
        try ch.writeInbound(RESPValue.array([.bulk("message"), .bulk("sc:room:lobby"), .bulk("1-0\n1\na\nhi")]))
        #expect(ch.isActive)
        #expect(seen.subscribed.withLockedValue { $0 } == ["sc:room:lobby"])
        #expect(seen.messages.withLockedValue { $0 } == ["sc:room:lobby=1-0\n1\na\nhi"])
        #expect(seen.errors.withLockedValue { $0 }.isEmpty)
        _ = try ch.finish()
    }

    /// With Sentinels, `ROLE` goes first: a replica (what a stale Sentinel answer or a demoted
    /// primary gives) closes the link, so it asks again; the primary's answer is passed over.
    @Test func aReplicasRoleClosesTheSubscriptionThePrimarysDoesNot() throws {
        let seen = Seen()
        let primary = try channel(seen, checkRole: true)
        try primary.writeInbound(RESPValue.array([.bulk("master"), .integer(100), .array([])]))
        try primary.writeInbound(RESPValue.array([.bulk("subscribe"), .bulk("sc:logout"), .integer(1)]))
        #expect(primary.isActive)
        #expect(seen.subscribed.withLockedValue { $0 } == ["sc:logout"])
        let replica = try channel(seen, checkRole: true)
        try replica.writeInbound(RESPValue.array([.bulk("slave"), .bulk("10.0.0.1"), .integer(6379), .bulk("connected"), .integer(100)]))
        #expect(!replica.isActive)
        #expect(seen.errors.withLockedValue { $0 }.last?.hasPrefix("ROLE slave") == true)
    }

    @Test func sentinelsAreReadFromOptions() throws {
        let options = Options(arguments: ["--redis-sentinels", "10.0.0.1:26379, 10.0.0.2:26379,10.0.0.3:26379"], environment: [:])
        let l = try RedisLocator.from(options: options, fixed: .unix(path: "/x"))
        #expect(l.usesSentinels && l.masterName == "sc")
        #expect(l.sentinels == [.tcp(host: "10.0.0.1", port: 26379), .tcp(host: "10.0.0.2", port: 26379), .tcp(host: "10.0.0.3", port: 26379)])
        let none = try RedisLocator.from(options: Options(arguments: [], environment: [:]), fixed: .unix(path: "/x"))
        #expect(!none.usesSentinels)
        #expect(throws: Options.Invalid.self) {
            try RedisLocator.from(options: Options(arguments: ["--redis-sentinels", "nohostport"], environment: [:]), fixed: .unix(path: "/x"))
        }
    }

    /// A cut network closes nothing: the subscription pings every second and gives up on a
    /// link silent for three (fake clock).
    @Test func aSilentLinkIsClosedAfterThreePings() throws {
        let seen = Seen()
        let handler = SubscriberHandler(onMessage: { _, _ in }, onSubscribed: { _ in }, keepalive: .seconds(1))
        let ch = EmbeddedChannel(handler: handler)
        try ch.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        let loop = ch.embeddedEventLoop
        loop.advanceTime(by: .seconds(1))
        #expect(try ch.readOutbound(as: [String].self) == ["PING"])
        loop.advanceTime(by: .seconds(1))
        try ch.writeInbound(RESPValue.array([.bulk("pong"), .bulk("")]))   // an answer keeps it open
        loop.advanceTime(by: .seconds(3))
        #expect(ch.isActive)
        loop.advanceTime(by: .seconds(1))
        #expect(!ch.isActive)
        _ = seen
    }
}

