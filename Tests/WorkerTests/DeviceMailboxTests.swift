import Proto
import Testing

@testable import Worker

/// `to_device` delivery order around a bind, without sockets or Redis.
@Suite struct DeviceMailboxTests {
    typealias Box = DeviceMailbox<String>
    static func id(_ ms: UInt64) -> MessageID { MessageID(ms: ms, seq: 0) }

    @Test func nothingReachesAnUnboundConnection() {
        var m = Box()
        #expect(m.live(device: "d1", id: Self.id(1), payload: "x") == .skip)
    }

    @Test func liveMessagesWaitForThePendingOnesAndNothingGoesTwice() {
        var m = Box()
        let g = m.bind("d1")
        // Published while the inbox is being read: it is also in the inbox, or comes after it.
        #expect(m.live(device: "d1", id: Self.id(3), payload: "m3") == .held)
        #expect(m.live(device: "d1", id: Self.id(4), payload: "m4") == .held)
        #expect(m.live(device: "other", id: Self.id(5), payload: "no") == .skip)
        #expect(m.pending([(Self.id(1), "m1"), (Self.id(2), "m2"), (Self.id(3), "m3")], generation: g) == ["m1", "m2", "m3"])
        #expect(m.fetched(generation: g) == ["m4"])
        #expect(m.live(device: "d1", id: Self.id(4), payload: "m4") == .skip)
        #expect(m.live(device: "d1", id: Self.id(6), payload: "m6") == .send)
    }

    @Test func aReadForAnOlderBindIsVoid() {
        var m = Box()
        let first = m.bind("d1")
        let second = m.bind("d2")
        #expect(m.pending([(Self.id(1), "old")], generation: first).isEmpty)
        #expect(m.fetched(generation: first).isEmpty)
        #expect(m.pending([(Self.id(1), "new")], generation: second) == ["new"])
        #expect(m.fetched(generation: second).isEmpty)
    }

    @Test func unbindingStopsDelivery() {
        var m = Box()
        let g = m.bind("d1")
        _ = m.fetched(generation: g)
        m.unbind("d1")
        #expect(m.live(device: "d1", id: Self.id(9), payload: "x") == .skip)
        #expect(m.device == nil)
    }
}
