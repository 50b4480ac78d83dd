import Testing

@testable import Worker

/// How long a message is tried again during a Redis outage, on a fake clock.
@Suite struct StoreHoldTests {
    @Test func triesAgainWithGrowingStepsUntilTheHoldRunsOut() {
        var h = StoreHold(holdMs: 2_000, startedMs: 10_000, hasRef: true)
        var now = 10_000
        var steps: [Int] = []
        while case let .again(ms) = h.failed(transient: true, nowMs: now, random: 1) {
            steps.append(ms)
            now += ms
        }
        // The last step is cut to end with the hold: the last try is at 2,000 ms.
        #expect(steps == [50, 100, 200, 400, 500, 500, 250])
        #expect(now - 10_000 == 2_000)
        #expect(h.tries == 8)
    }

    @Test func aTryThatTookLongCountsAgainstTheHold() {
        var h = StoreHold(holdMs: 5_000, startedMs: 0, hasRef: true)
        // The first try waited for the 5 s command timeout on a connection that went silent.
        #expect(h.failed(transient: true, nowMs: 5_100) == .answer)
    }

    @Test func aStepIsCutToEndWithTheHold() {
        var h = StoreHold(holdMs: 1_000, startedMs: 0, hasRef: true)
        #expect(h.failed(transient: true, nowMs: 980, random: 1) == .again(afterMs: 20))
        #expect(h.failed(transient: true, nowMs: 1_000) == .answer)
    }

    @Test func stepsAreJitteredBetweenHalfAndAllOfTheirLength() {
        var low = StoreHold(holdMs: 5_000, startedMs: 0, hasRef: true)
        #expect(low.failed(transient: true, nowMs: 0, random: 0) == .again(afterMs: 25))
        #expect(low.failed(transient: true, nowMs: 25, random: 0) == .again(afterMs: 50))
        var high = StoreHold(holdMs: 5_000, startedMs: 0, hasRef: true)
        #expect(high.failed(transient: true, nowMs: 0, random: 1) == .again(afterMs: 50))
        var mid = StoreHold(holdMs: 5_000, startedMs: 0, hasRef: true)
        #expect(mid.failed(transient: true, nowMs: 0, random: 0.5) == .again(afterMs: 38))
    }

    @Test func withoutARefNothingIsHeld() {
        // A try that reached Redis before its connection went could be stored twice.
        var h = StoreHold(holdMs: 5_000, startedMs: 0, hasRef: false)
        #expect(h.failed(transient: true, nowMs: 0) == .answer)
    }

    @Test func aReadIsHeldAsAMessageWithARefIs() {
        // Repeating a read changes nothing, so it needs no ref to be tried again.
        var h = StoreHold.read(holdMs: 1_000, startedMs: 0)
        #expect(h.failed(transient: true, nowMs: 0, random: 1) == .again(afterMs: 50))
        #expect(h.failed(transient: true, nowMs: 1_000) == .answer)
        var off = StoreHold.read(holdMs: 0, startedMs: 0)
        #expect(off.failed(transient: true, nowMs: 0) == .answer)
    }

    @Test func aFailureThatWaitingCannotMendIsAnsweredAtOnce() {
        var h = StoreHold(holdMs: 5_000, startedMs: 0, hasRef: true)
        #expect(h.failed(transient: false, nowMs: 0) == .answer)
        #expect(h.tries == 1)
    }

    @Test func holdZeroAnswersAtOnce() {
        var h = StoreHold(holdMs: 0, startedMs: 0, hasRef: true)
        #expect(h.failed(transient: true, nowMs: 0) == .answer)
    }
}
