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

    func channel(_ seen: Seen) throws -> EmbeddedChannel {
        let handler = SubscriberHandler(
            onMessage: { channel, payload in seen.messages.withLockedValue { $0.append(channel + "=" + payload) } },
            onSubscribed: { n in seen.subscribed.withLockedValue { $0.append(n) } },
            onError: { e in seen.errors.withLockedValue { $0.append(e) } })
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
}
