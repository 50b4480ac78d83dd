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
        #expect(t.add(a) == nil)
        #expect(t.add(nil) == nil)
        var split = SentinelTally(sentinels: 4)
        for e in [a, a, b, b] { #expect(split.add(e) == nil) }
        #expect(split.distinctAnswers == 2)
    }

    @Test func oneSentinelDecidesAlone() {
        var t = SentinelTally(sentinels: 1)
        #expect(t.add(a) == a)
    }
}
