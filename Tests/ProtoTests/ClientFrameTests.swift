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
        (#"{"type":"send","text":"x","room":"\u00fcber"}"#, .badRequest),
        (#"{"type":"send","text":"x","room":"-dash"}"#, .badRequest),
        (#"{"type":"send","text":"x","room":"dm:bob:alice"}"#, .badRequest),
        (#"{"type":"send","text":"x","e2ee":{}}"#, .badRequest),
        (#"{"type":"create_room","name":"dev","kind":"public","encrypted":false}"#, .badRequest),
        (#"{"type":"create_room","name":"dev","kind":"secret"}"#, .badRequest),
        (#"{"type":"create_room","name":"\u00fc","kind":"public"}"#, .badRequest),
        (#"{"type":"create_room","name":"dev","kind":"private","encrypted":1}"#, .badRequest),
        (#"{"type":"history","room":"dev","limit":101}"#, .badRequest),
        (#"{"type":"history","room":"dev","limit":true}"#, .badRequest),
        (#"{"type":"react","room":"dev","id":"1-0","emoji":""}"#, .badRequest),
        (#"{"type":"invite","room":"dev","user":"b o b"}"#, .badRequest),
        (#"{"type":"join"}"#, .badRequest),
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

@Suite struct RoomFrameTests {
    func decode(_ s: String) -> Result<ClientFrame, ClientFrameError> { ClientFrame.decode(Array(s.utf8)) }

    @Test func namesFoldToLowerCaseInASCIIOnly() {
        #expect(decode(#"{"type":"create_room","name":"T-AB12","kind":"private","encrypted":true,"ref":"c"}"#)
            == .success(.createRoom(name: "t-ab12", kind: .private, title: nil, topic: nil, encrypted: true, ref: "c")))
        #expect(decode(#"{"type":"join","room":"Dev_1"}"#) == .success(.join(room: "dev_1", ref: nil)))
    }

    @Test func dmIdsAreTheTwoNamesInByteOrder() {
        #expect(RoomID.dm("bob", "Alice") == "dm:Alice:bob")
        #expect(RoomID.dmUsers("dm:Alice:bob")! == ("Alice", "bob"))
        #expect(RoomID.dmUsers("dm:bob:bob") == nil)
        #expect(decode(#"{"type":"send","room":"dm:Alice:bob","e2ee":{"c":"x"}}"#)
            == .success(.send(content: .e2ee(#"{"c":"x"}"#), ref: nil, room: "dm:Alice:bob")))
    }

    @Test func e2eeOverItsLimitIsTooLong() {
        let big = String(repeating: "a", count: ChatLimits.maxE2EEBytes)
        guard case let .failure(e) = decode(#"{"type":"send","room":"dm:a:b","e2ee":{"c":"\#(big)"},"ref":"r"}"#) else {
            Issue.record("accepted")
            return
        }
        #expect(e.code == .tooLong && e.ref == "r")
    }

    @Test func lifecycleFrames() {
        #expect(decode(#"{"type":"send","text":"re","room":"dev","reply_to":"5-1"}"#)
            == .success(.send(content: .text("re"), ref: nil, room: "dev", replyTo: MessageID(ms: 5, seq: 1))))
        #expect(decode(#"{"type":"react","room":"dev","id":"5-1","emoji":"👍","on":false,"ref":"x"}"#)
            == .success(.react(room: "dev", id: MessageID(ms: 5, seq: 1), emoji: "👍", on: false, ref: "x")))
        #expect(decode(#"{"type":"history","room":"dev"}"#) == .success(.history(room: "dev", before: nil, limit: 50, ref: nil)))
        #expect(decode(#"{"type":"typing","room":"dev","ref":"t"}"#).map(\.ref) == .success("t"))
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

@Suite struct E2EEFrameTests {
    func decode(_ s: String) -> Result<ClientFrame, ClientFrameError> { ClientFrame.decode(Array(s.utf8)) }
    func code(_ s: String) -> ClientFrameError.Code? {
        if case let .failure(e) = decode(s) { return e.code }
        return nil
    }

    @Test func devicesAreBoundedObjectsWithAnID() {
        guard case let .success(.device(id, json, ref)) = decode(#"{"type":"device","device":{"id":"d-1","k":"x"},"ref":"r"}"#) else {
            Issue.record("refused")
            return
        }
        #expect(id == "d-1" && ref == "r" && json == #"{"id":"d-1","k":"x"}"#)
        #expect(code(#"{"type":"device","device":{"k":"x"}}"#) == .badRequest)
        #expect(code(#"{"type":"device","device":{"id":"a b"}}"#) == .badRequest)
        let big = String(repeating: "x", count: 4100)
        #expect(code(#"{"type":"device","device":{"id":"d","k":"\#(big)"}}"#) == .tooLong)
    }

    @Test func toDeviceAndKeysAndBackupLimits() {
        #expect(code(#"{"type":"to_device","messages":[]}"#) == .badRequest)
        #expect(code(#"{"type":"to_device","messages":[{"user":"bob","device":"d","payload":{"c":"\#(String(repeating: "y", count: 16400))"}}]}"#) == .tooLong)
        guard case let .success(.toDevice(messages, _)) = decode(#"{"type":"to_device","messages":[{"user":"bob","device":"d","payload":"opaque"}]}"#) else {
            Issue.record("refused")
            return
        }
        #expect(messages == [ToDeviceMessage(user: "bob", device: "d", payload: "\"opaque\"")])
        let many = (0...100).map { "\"u\($0)\"" }.joined(separator: ",")
        #expect(code(#"{"type":"keys","users":[\#(many)]}"#) == .badRequest)
        #expect(code(#"{"type":"backup_put","backup":"\#(String(repeating: "z", count: 49200))"}"#) == .tooLong)
        #expect(decode(#"{"type":"backup_get","ref":"b"}"#) == .success(.backupGet(ref: "b")))
        #expect(decode(#"{"type":"to_device_ack","upto":"5-2"}"#) == .success(.toDeviceAck(upto: MessageID(ms: 5, seq: 2), ref: nil)))
    }
}
