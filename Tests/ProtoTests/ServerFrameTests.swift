import Foundation
import NIOCore
import Proto
import Testing

@Suite struct ServerFrameTests {
    func object(_ json: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
    }

    @Test func messageEscapesEverything() throws {
        let text = "quote \" backslash \\ newline \n tab \t bell \u{7} <script>alert(1)</script> \u{2028} é 😀"
        let m = ChatMessage(id: MessageID(ms: 1, seq: 2), room: "lobby", from: "al\"ice", text: text)
        let o = try object(ServerFrame.message(m).json)
        #expect(o["type"] as? String == "message")
        #expect(o["id"] as? String == "1-2")
        #expect(o["text"] as? String == text)
        #expect(o["from"] as? String == "al\"ice")
        #expect((o["ts"] as? NSNumber)?.intValue == 1)   // the id's milliseconds
    }

    @Test func welcomeSortsOnlineAndKeepsHistoryOrder() throws {
        let h = [1, 2, 3].map { ChatMessage(id: MessageID(ms: UInt64($0), seq: 0), room: "lobby", from: "a", text: "t\($0)") }
        let o = try object(ServerFrame.welcome(user: "bob", room: "lobby", online: ["zed", "amy"], history: h, rooms: "[]").json)
        #expect(o["online"] as? [String] == ["amy", "zed"])
        let ids = (o["history"] as? [[String: Any]])?.compactMap { $0["id"] as? String }
        #expect(ids == ["1-0", "2-0", "3-0"])
    }

    @Test func errorCarriesRefAndRetry() throws {
        let o = try object(ServerFrame.error(code: "rate_limited", message: "slow", ref: "r", retryAfterMs: 250).json)
        #expect(o["code"] as? String == "rate_limited")
        #expect(o["ref"] as? String == "r")
        #expect((o["retry_after_ms"] as? NSNumber)?.intValue == 250)
        let plain = try object(ServerFrame.error(code: "bad_request", message: "x", ref: nil, retryAfterMs: nil).json)
        #expect(plain["ref"] == nil && plain["retry_after_ms"] == nil)
    }

    @Test func syncedAndPresence() throws {
        #expect(try object(ServerFrame.synced(room: "lobby", recovered: false).json)["recovered"] as? Bool == false)
        #expect(try object(ServerFrame.presence(user: "a", online: true).json)["online"] as? Bool == true)
    }

    @Test func relayPayloadRoundTripsTextWithNewlines() {
        let m = ChatMessage(id: MessageID(ms: 10, seq: 1), room: "lobby", from: "bob", text: "line 1\nline 2\n")
        #expect(RoomRelay(payload: m.relayPayload, room: "lobby") == .history(m))
        #expect(RoomRelay(payload: "garbage", room: "lobby") == nil)
        let typing = RoomRelay.typing(user: "amy", json: "{\"type\":\"typing\"}")
        #expect(RoomRelay(payload: typing.payload, room: "dev") == typing)
        for u in [UserRelay.added(room: "dev", lastID: MessageID(ms: 5, seq: 0), except: "w.1", json: "{\n}"),
                  .removed(room: "dm:a:b", except: "", json: "{}"), .frame(except: "x", json: "{\"a\":\"\\n\"}")] {
            #expect(UserRelay(payload: u.payload) == u)
        }
    }
}

@Suite struct CoordinatorCodecTests {
    @Test func framesRoundTrip() throws {
        let frames: [CoordinatorFrame] = [
            .request(id: 1, .register(worker: "w1", address: "unix:/tmp/w1.sock", connections: [ConnectionInfo(id: "c", user: "u")])),
            .request(id: 2, .rateCheck(kind: .loginAddress, key: "127.0.0.1", consume: false)),
            .response(id: 2, .rate(allowed: false, retryAfterMs: 1200)),
            .response(id: 3, .opened(online: ["a", "b"])),
            .presence(user: "a", online: false),
        ]
        for f in frames {
            var buffer = try CoordinatorCodec.encode(f, allocator: ByteBufferAllocator())
            let prefix = buffer.readInteger(as: UInt32.self)
            let length = try #require(prefix)
            #expect(Int(length) == buffer.readableBytes)
            #expect(try CoordinatorCodec.decode(buffer) == f)
        }
    }
}
