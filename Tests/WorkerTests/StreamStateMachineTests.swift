import Proto
import Testing

@testable import Worker

/// Every rule of a stream's life, with a fake clock and no sockets.
@Suite struct StreamStateMachineTests {
    typealias Machine = StreamStateMachine<String, String>

    static func id(_ ms: UInt64) -> MessageID { MessageID(ms: ms, seq: 0) }

    /// A machine that is live, with `lastHistory` as the welcome's newest message.
    static func live(lastHistory: UInt64? = nil, nowMs: Int64 = 0) -> Machine {
        var m = Machine(nowMs: nowMs, idleMs: 10_000, maxHeld: 4, inputHigh: 3, inputLow: 1)
        _ = m.opened()
        _ = m.sessionChecked(endsAtMs: 100_000, nowMs: nowMs)
        _ = m.welcomeReady("welcome", lastHistory: lastHistory.map(id))
        return m
    }

    static func sent(_ actions: [Machine.Action]) -> [String] {
        actions.compactMap { if case let .send(p) = $0 { return p } else { return nil } }
    }

    @Test func sessionIsCheckedBeforeAnythingElse() {
        var m = Machine(nowMs: 0, idleMs: 10_000)
        guard case .checkSession = m.opened().first else { Issue.record("no session check"); return }
        #expect(m.phase == .checkingSession)
        let a = m.sessionChecked(endsAtMs: 50, nowMs: 0)
        guard case .fetchWelcome = a.first, a.count == 1 else { Issue.record("\(a)"); return }
    }

    @Test func invalidOrEndedSessionClosesWith4001AndReportsNothing() {
        var m = Machine(nowMs: 0, idleMs: 10_000)
        _ = m.opened()
        let a = m.sessionChecked(endsAtMs: nil, nowMs: 0)
        guard a.count == 1, case .close(4001) = a[0] else { Issue.record("\(a)"); return }
        #expect(m.isClosed)
        var n = Machine(nowMs: 0, idleMs: 10_000)
        let b = n.sessionChecked(endsAtMs: 10, nowMs: 10)
        guard b.count == 1, case .close(4001) = b[0] else { Issue.record("\(b)"); return }
        // The client leaving after that reports nothing: it was never reported open.
        #expect(n.clientClosed().isEmpty)
    }

    @Test func sessionCheckThatCannotBeMadeClosesWith1013() {
        var m = Machine(nowMs: 0, idleMs: 10_000)
        _ = m.opened()
        let a = m.sessionCheckFailed()
        guard a.count == 1, case .close(1013) = a[0] else { Issue.record("\(a)"); return }
    }

    @Test func welcomeComesFirstThenEventsThenHeldMessagesNewerThanHistory() {
        var m = Machine(nowMs: 0, idleMs: 10_000)
        _ = m.opened()
        #expect(m.event("presence-1") == .held)
        #expect(m.live(id: Self.id(5), payload: "m5") == .held)
        _ = m.sessionChecked(endsAtMs: 100_000, nowMs: 0)
        #expect(m.live(id: Self.id(7), payload: "m7") == .held)
        #expect(m.event("presence-2") == .held)
        let a = m.welcomeReady("welcome", lastHistory: Self.id(5))
        // m5 is in the history already; m7 came after it.
        #expect(Self.sent(a) == ["welcome", "presence-1", "presence-2", "m7"])
        #expect(m.rooms["lobby"] == Self.id(7))
        #expect(m.event("presence-3") == .send)
    }

    @Test func liveMessagesAreSentInOrderAndNeverTwice() {
        var m = Self.live(lastHistory: 3)
        #expect(m.live(id: Self.id(3), payload: "m3") == .skip)
        #expect(m.live(id: Self.id(4), payload: "m4") == .send)
        #expect(m.live(id: Self.id(4), payload: "m4") == .skip)
        #expect(m.live(id: MessageID(ms: 4, seq: 10), payload: "m4-10") == .send)
        #expect(m.live(id: MessageID(ms: 4, seq: 9), payload: "m4-9") == .skip)
    }

    @Test func syncHoldsLiveThenReleasesWhatIsNewerThanTheReplay() {
        var m = Self.live(lastHistory: 2)
        m.replayBegan()
        #expect(m.live(id: Self.id(6), payload: "m6") == .held)
        #expect(m.live(id: Self.id(9), payload: "m9") == .held)
        // The replay sends older ones too: a client asked for them.
        let r = m.replayed([(Self.id(1), "m1"), (Self.id(5), "m5"), (Self.id(6), "m6")])
        #expect(Self.sent(r) == ["m1", "m5", "m6"])
        let e = m.replayEnded("synced")
        #expect(Self.sent(e) == ["synced", "m9"])
        #expect(m.live(id: Self.id(9), payload: "m9") == .skip)
        #expect(m.live(id: Self.id(10), payload: "m10") == .send)
    }

    @Test func nestedReplaysReleaseOnlyAfterTheLast() {
        var m = Self.live()
        m.replayBegan()
        m.replayBegan()
        #expect(m.live(id: Self.id(4), payload: "m4") == .held)
        #expect(Self.sent(m.replayEnded("synced-1")) == ["synced-1"])
        #expect(m.live(id: Self.id(5), payload: "m5") == .held)
        #expect(Self.sent(m.replayEnded("synced-2")) == ["synced-2", "m4", "m5"])
    }

    @Test func tooManyHeldClosesSlowStream() {
        var m = Self.live()
        m.replayBegan()
        for i in 1...4 { #expect(m.live(id: Self.id(UInt64(i)), payload: "m\(i)") == .held) }
        #expect(m.live(id: Self.id(5), payload: "m5") == .closeSlow)
    }

    @Test func framesRunOneAtATimeInOrderWithBackpressure() {
        var m = Machine(nowMs: 0, idleMs: 10_000, maxHeld: 4, inputHigh: 3, inputLow: 1)
        _ = m.opened()
        // Before welcome, frames queue.
        #expect(m.clientFrame("f1").isEmpty)
        _ = m.sessionChecked(endsAtMs: 100_000, nowMs: 0)
        let w = m.welcomeReady("welcome", lastHistory: nil)
        guard case .send("welcome") = w[0], case .process("f1") = w[1] else { Issue.record("\(w)"); return }
        #expect(m.clientFrame("f2").isEmpty)
        #expect(m.clientFrame("f3").isEmpty)
        let p = m.clientFrame("f4")
        guard p.count == 1, case .pauseInput = p[0] else { Issue.record("\(p)"); return }
        let d1 = m.frameDone()
        guard d1.count == 1, case .process("f2") = d1[0] else { Issue.record("\(d1)"); return }
        let d2 = m.frameDone()
        guard d2.count == 2, case .process("f3") = d2[0], case .resumeInput = d2[1] else { Issue.record("\(d2)"); return }
        let d3 = m.frameDone()
        guard d3.count == 1, case .process("f4") = d3[0] else { Issue.record("\(d3)"); return }
        #expect(m.frameDone().isEmpty)
        let n = m.clientFrame("f5")
        guard n.count == 1, case .process("f5") = n[0] else { Issue.record("\(n)"); return }
    }

    @Test func openStreamTouchesItsSessionEveryHalfIdlePeriod() {
        var m = Self.live(nowMs: 1_000)
        #expect(m.tick(nowMs: 5_999).isEmpty)
        let a = m.tick(nowMs: 6_000)
        guard a.count == 1, case .touchSession = a[0] else { Issue.record("\(a)"); return }
        #expect(m.tick(nowMs: 7_000).isEmpty)
        let b = m.tick(nowMs: 11_000)
        guard b.count == 1, case .touchSession = b[0] else { Issue.record("\(b)"); return }
    }

    @Test func absoluteEndClosesWith4001AndReportsTheClose() {
        var m = Self.live()
        #expect(m.tick(nowMs: 99_999).count == 1)  // a touch, not a close
        let a = m.tick(nowMs: 100_000)
        guard a.count == 2, case .close(4001) = a[0], case .reportClosed = a[1] else { Issue.record("\(a)"); return }
        #expect(m.tick(nowMs: 100_001).isEmpty)
    }

    @Test func lostSessionClosesOnce() {
        var m = Self.live()
        let a = m.sessionLost()
        guard a.count == 2, case .close(4001) = a[0] else { Issue.record("\(a)"); return }
        #expect(m.close(1012).isEmpty)
        #expect(m.clientClosed().isEmpty)
        #expect(m.live(id: Self.id(100), payload: "late") == .skip)
        #expect(m.frameDone().isEmpty)
    }

    @Test func clientLeavingReportsTheCloseExactlyOnce() {
        var m = Self.live()
        let a = m.clientClosed()
        guard a.count == 1, case .reportClosed = a[0] else { Issue.record("\(a)"); return }
        #expect(m.clientClosed().isEmpty)
        #expect(m.close(1000).isEmpty)
    }

    @Test func resultsArrivingAfterCloseAreIgnored() {
        var m = Machine(nowMs: 0, idleMs: 10_000)
        _ = m.opened()
        _ = m.sessionChecked(endsAtMs: 100_000, nowMs: 0)
        _ = m.close(1012)
        #expect(m.welcomeReady("welcome", lastHistory: nil).isEmpty)
        #expect(m.replayed([(Self.id(1), "m1")]).isEmpty)
        #expect(m.replayEnded("synced").isEmpty)
    }

    @Test func aClientIgnoringThePauseIsClosedWith1008() {
        var m = Machine(nowMs: 0, idleMs: 10_000, maxHeld: 4, inputHigh: 3, inputLow: 1, maxInboxBytes: 1000)
        _ = m.opened()
        _ = m.sessionChecked(endsAtMs: 100_000, nowMs: 0)
        _ = m.welcomeReady("welcome", lastHistory: nil)
        _ = m.clientFrame("busy", bytes: 500)
        for i in 0..<10 { #expect(!m.clientFrame("f\(i)", bytes: 100).contains { if case .close = $0 { true } else { false } }) }
        let a = m.clientFrame("one too many", bytes: 1)
        guard a.count == 2, case .close(1008) = a[0], case .reportClosed = a[1] else { Issue.record("\(a)"); return }
        #expect(m.isClosed)
    }

    @Test func streamClosedDuringItsSessionCheckEndsClosed() {
        var m = Machine(nowMs: 0, idleMs: 10_000)
        _ = m.opened()
        #expect(m.clientClosed().isEmpty)   // nothing to report: it was never reported open
        #expect(m.isClosed)                 // and the link handler forgets it for that
        #expect(m.sessionChecked(endsAtMs: 100, nowMs: 0).isEmpty)
    }

    // MARK: rooms

    /// Live in lobby and in `rooms` (each seen up to id 0).
    static func member(of rooms: [String]) -> Machine {
        var m = Machine(nowMs: 0, idleMs: 10_000, maxHeld: 4, inputHigh: 3, inputLow: 1)
        _ = m.opened()
        _ = m.sessionChecked(endsAtMs: 100_000, nowMs: 0)
        var snapshot: [String: MessageID] = ["lobby": .zero]
        for r in rooms { snapshot[r] = .zero }
        _ = m.welcomeReady("welcome", rooms: snapshot)
        return m
    }

    @Test func onlyTheUsersRoomsAreDelivered() {
        var m = Self.member(of: ["dev"])
        #expect(m.live(room: "dev", id: Self.id(5), payload: "d5") == .send)
        #expect(m.live(room: "ops", id: Self.id(6), payload: "o6") == .skip)
        #expect(m.roomEvent(room: "ops", payload: "typing") == .skip)
        #expect(m.roomEvent(room: "dev", payload: "typing") == .send)
    }

    @Test func idsOrderEachRoomOnItsOwn() {
        var m = Self.member(of: ["a", "b"])
        #expect(m.live(room: "a", id: Self.id(9), payload: "a9") == .send)
        // An older id in another room is news: ids compare within a room only.
        #expect(m.live(room: "b", id: Self.id(3), payload: "b3") == .send)
        #expect(m.live(room: "a", id: Self.id(8), payload: "a8") == .skip)
    }

    @Test func joiningDeliversWhatFollowsTheJoin() {
        var m = Self.member(of: [])
        let r1 = m.joined(room: "dev", lastID: Self.id(10))
        #expect(r1)
        let r2 = m.joined(room: "dev", lastID: Self.id(10))
        #expect(!r2)
        #expect(m.live(room: "dev", id: Self.id(10), payload: "before") == .skip)
        #expect(m.live(room: "dev", id: Self.id(11), payload: "after") == .send)
    }

    @Test func leavingStopsLiveHeldAndReplayedEvents() {
        var m = Self.member(of: ["dev"])
        m.replayBegan(room: "dev")
        #expect(m.live(room: "dev", id: Self.id(4), payload: "held") == .held)
        let r3 = m.left(room: "dev")
        #expect(r3)
        let r4 = m.left(room: "dev")
        #expect(!r4)
        #expect(m.replayed(room: "dev", [(Self.id(2), "old")]).isEmpty)
        // Neither the held event nor a `synced` of a room the user left goes out.
        #expect(Self.sent(m.replayEnded(room: "dev", "synced")).isEmpty)
        #expect(m.live(room: "dev", id: Self.id(5), payload: "d5") == .skip)
        #expect(m.roomEvent(room: "dev", payload: "member") == .skip)
    }

    @Test func aReplayHoldsOnlyItsOwnRoom() {
        var m = Self.member(of: ["a", "b"])
        m.replayBegan(room: "a")
        #expect(m.live(room: "a", id: Self.id(5), payload: "a5") == .held)
        #expect(m.live(room: "b", id: Self.id(5), payload: "b5") == .send)
        #expect(Self.sent(m.replayed(room: "a", [(Self.id(3), "a3")])) == ["a3"])
        #expect(Self.sent(m.replayEnded(room: "a", "synced-a")) == ["synced-a", "a5"])
    }

    @Test func membershipChangesBeforeTheWelcomeApplyAfterItsSnapshot() {
        var m = Machine(nowMs: 0, idleMs: 10_000)
        _ = m.opened()
        _ = m.sessionChecked(endsAtMs: 100_000, nowMs: 0)
        // Heard on the user's channel while the snapshot was being read: applied in order after it.
        let r5 = m.joined(room: "new", lastID: Self.id(7))
        #expect(!r5)
        let r6 = m.left(room: "old")
        #expect(!r6)
        _ = m.welcomeReady("welcome", rooms: ["lobby": .zero, "old": Self.id(1)])
        #expect(m.isMember("new") && !m.isMember("old") && m.isMember("lobby"))
        #expect(m.live(room: "new", id: Self.id(7), payload: "x") == .skip)
        #expect(m.live(room: "new", id: Self.id(8), payload: "y") == .send)
    }
}
