import ChatCore
import Testing

/// The Sentinels' votes for the primary, as their answers arrive in any order.
@Suite struct SentinelTallyTests {
    let a = Endpoint.tcp(host: "10.0.0.1", port: 6379)
    let b = Endpoint.tcp(host: "10.0.0.2", port: 6379)

    @Test func twoOfThreeAgreeingDecideWithoutTheThird() {
        var t = SentinelTally(sentinels: 3)
        #expect(t.add(a) == nil)
        #expect(t.add(a) == a)
        #expect(!t.undecidable)
        // The third (its host cut off) is not waited for; a late answer changes nothing.
        #expect(t.add(b) == nil)
    }

    @Test func aCutOffSentinelNamingTheOldPrimaryIsOutvoted() {
        var t = SentinelTally(sentinels: 3)
        #expect(t.add(a) == nil)
        #expect(t.add(b) == nil)
        #expect(t.add(b) == b)
    }

    @Test func noMajorityOfAllTheSentinelsNoAnswer() {
        // One answer of three is no majority, even if the others did not answer.
        var t = SentinelTally(sentinels: 3)
        #expect(t.add(nil) == nil)
        #expect(!t.undecidable)
        #expect(t.add(a) == nil)
        #expect(!t.undecidable)
        #expect(t.add(nil) == nil)
        #expect(t.undecidable)
        var split = SentinelTally(sentinels: 4)
        for e in [a, a, b] { #expect(split.add(e) == nil) }
        #expect(!split.undecidable)
        #expect(split.add(b) == nil)
        #expect(split.undecidable)
        #expect(split.distinctAnswers == 2)
    }

    @Test func theLastSentinelIsWaitedForOnlyWhileItCanStillDecide() {
        // Two that disagree: the third breaks the tie either way.
        var t = SentinelTally(sentinels: 3)
        #expect(t.add(a) == nil)
        #expect(t.add(b) == nil)
        #expect(!t.undecidable)
        #expect(t.add(b) == b)
        // Two without an answer: the third alone is no majority, so it is not waited for.
        var none = SentinelTally(sentinels: 3)
        #expect(none.add(nil) == nil)
        #expect(none.add(nil) == nil)
        #expect(none.undecidable)
    }

    @Test func oneSentinelDecidesAlone() {
        var t = SentinelTally(sentinels: 1)
        #expect(t.add(a) == a)
    }
}
