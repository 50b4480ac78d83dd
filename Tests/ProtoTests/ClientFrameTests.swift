import Proto
import Testing

@Suite struct ClientFrameTests {
    func decode(_ s: String) -> Result<ClientFrame, ClientFrameError> { ClientFrame.decode(Array(s.utf8)) }

    @Test func sendIsTrimmedAndDefaultsToLobby() {
        #expect(decode(#"{"type":"send","text":"  hi \u2003","ref":"r1"}"#) == .success(.send(text: "hi", ref: "r1", room: "lobby")))
    }

    @Test func textLimitsCountCodePoints() {
        let max = String(repeating: "é", count: 2000)
        #expect(decode(#"{"type":"send","text":"\#(max)"}"#) == .success(.send(text: max, ref: nil, room: "lobby")))
        let over = String(repeating: "a", count: 2001)
        guard case let .failure(e) = decode(#"{"type":"send","text":"\#(over)","ref":"x"}"#) else { Issue.record("accepted"); return }
        #expect(e.code == .tooLong && e.ref == "x")
        guard case let .failure(empty) = decode(#"{"type":"send","text":" \n\t\u00a0 "}"#) else { Issue.record("accepted"); return }
        #expect(empty.code == .empty)
    }

    @Test(arguments: [
        ("not json", ClientFrameError.Code.badRequest),
        ("[1,2]", .badRequest),
        (#"{"text":"no type"}"#, .badRequest),
        (#"{"type":5}"#, .badRequest),
        (#"{"type":"send"}"#, .badRequest),
        (#"{"type":"send","text":7}"#, .badRequest),
        (#"{"type":"send","text":"x","room":"attic"}"#, .badRequest),
        (#"{"type":"send","text":"x","ref":42}"#, .badRequest),
        (#"{"type":"sync","since":"abc"}"#, .badRequest),
        (#"{"type":"sync"}"#, .badRequest),
        (#"{"type":"shout"}"#, .unknownType),
    ])
    func rejections(input: String, code: ClientFrameError.Code) {
        guard case let .failure(e) = decode(input) else {
            Issue.record("accepted \(input)")
            return
        }
        #expect(e.code == code)
    }

    @Test func syncParsesIDs() {
        #expect(decode(#"{"type":"sync","since":"1732545000123-7"}"#) == .success(.sync(since: MessageID(ms: 1732545000123, seq: 7), room: "lobby")))
    }
}

@Suite struct MessageIDTests {
    @Test func comparesAsIntegerPairs() throws {
        let a = try #require(MessageID("5-9"))
        let b = try #require(MessageID("5-10"))
        #expect(a < b)
        #expect(MessageID("6-0")! > b)
        #expect(MessageID("7") == MessageID(ms: 7, seq: 0))
        #expect(b.description == "5-10")
    }

    @Test(arguments: ["", "-", "1-", "-1", "a-1", "1-2-3", "1--2", "+1-2", " 1-2", "99999999999999999999999-1"])
    func rejectsMalformed(text: String) {
        #expect(MessageID(text) == nil)
    }
}
