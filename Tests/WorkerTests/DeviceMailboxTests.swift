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
        let g = m.bind("d1").generation
        // Published while the inbox is being read: it is also in the inbox, or comes after it.
        #expect(m.live(device: "d1", id: Self.id(3), payload: "m3") == .held)
        #expect(m.live(device: "d1", id: Self.id(4), payload: "m4") == .held)
        #expect(m.live(device: "other", id: Self.id(5), payload: "no") == .skip)
        #expect(m.pending([(Self.id(1), "m1"), (Self.id(2), "m2"), (Self.id(3), "m3")], generation: g) == ["m1", "m2", "m3"])
        #expect(m.fetched(generation: g) == .done(["m4"]))
        #expect(m.live(device: "d1", id: Self.id(4), payload: "m4") == .skip)
        #expect(m.live(device: "d1", id: Self.id(6), payload: "m6") == .send)
    }

    @Test func aReadForAnOlderBindIsVoid() {
        var m = Box()
        let first = m.bind("d1").generation
        let second = m.bind("d2").generation
        #expect(m.pending([(Self.id(1), "old")], generation: first).isEmpty)
        #expect(m.fetched(generation: first) == .done([]))
        #expect(m.pending([(Self.id(1), "new")], generation: second) == ["new"])
        #expect(m.fetched(generation: second) == .done([]))
    }

    @Test func tooManyHeldMeansReadingAgainNotSkipping() {
        var m = DeviceMailbox<String>(maxHeld: 2)
        let g = m.bind("d1").generation
        #expect(m.live(device: "d1", id: Self.id(5), payload: "m5") == .held)
        #expect(m.live(device: "d1", id: Self.id(6), payload: "m6") == .held)
        #expect(m.live(device: "d1", id: Self.id(7), payload: "m7") == .skip)   // not kept: read again
        #expect(m.pending([(Self.id(4), "m4")], generation: g) == ["m4"])
        #expect(m.fetched(generation: g) == .reread(after: Self.id(4)))
        #expect(m.pending([(Self.id(5), "m5"), (Self.id(6), "m6"), (Self.id(7), "m7")], generation: g) == ["m5", "m6", "m7"])
        #expect(m.fetched(generation: g) == .done([]))
        #expect(m.live(device: "d1", id: Self.id(8), payload: "m8") == .send)
    }

    @Test func rebindingTheSameDeviceReadsOnFromWhatItHad() {
        var m = Box()
        let g = m.bind("d1").generation
        _ = m.pending([(Self.id(3), "m3")], generation: g)
        _ = m.fetched(generation: g)
        #expect(m.bind("d1").after == Self.id(3))
        #expect(m.bind("d2").after == .zero)
    }

    @Test func unbindingStopsDelivery() {
        var m = Box()
        let g = m.bind("d1").generation
        _ = m.fetched(generation: g)
        m.unbind("d1")
        #expect(m.live(device: "d1", id: Self.id(9), payload: "x") == .skip)
        #expect(m.device == nil)
    }
}
