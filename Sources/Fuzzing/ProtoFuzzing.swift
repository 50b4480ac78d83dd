import Foundation
import NIOCore
import NIOEmbedded
import Proto

/// Fuzz targets for every decoder that reads bytes another party chose: the client frame
/// decoder (browsers), message ids (clients' `since`), relay payloads (Redis pub/sub) and the
/// coordinator link codec (other processes). Each target checks properties, not only the
/// absence of crashes: what decodes must satisfy the contract's limits and survive a round trip.
///
/// The first input byte picks the target (modulo the count), the rest is its input. The same
/// function serves libFuzzer (`securechat-fuzz` built with `-sanitize=fuzzer`), the corpus
/// replay in `swift test`, and the replay mode of the plain `securechat-fuzz` executable.
public enum ProtoFuzzing {
    public enum Target: UInt8, CaseIterable, Sendable {
        case clientFrame, messageID, relayPayload, coordinatorFrame, lengthPrefixed, linkFrames
    }

    /// Runs one input; returns a description of the violated property, or nil.
    public static func check(_ input: [UInt8]) -> String? {
        guard let first = input.first else { return nil }
        let target = Target(rawValue: first % UInt8(Target.allCases.count))!
        let body = input.dropFirst()
        switch target {
        case .clientFrame: return clientFrame(Array(body))
        case .messageID: return messageID(String(decoding: body, as: UTF8.self))
        case .relayPayload: return relayPayload(String(decoding: body, as: UTF8.self))
        case .coordinatorFrame: return coordinatorFrame(Array(body))
        case .lengthPrefixed: return lengthPrefixed(Array(body))
        case .linkFrames: return linkFrames(Array(body))
        }
    }

    static func clientFrame(_ bytes: [UInt8]) -> String? {
        switch ClientFrame.decode(bytes) {
        case let .failure(error):
            if let ref = error.ref, ref.utf8.count > ChatLimits.maxRefBytes { return "error echoes an over-long ref" }
            return nil
        case let .success(frame):
            if let ref = frame.ref, ref.utf8.count > ChatLimits.maxRefBytes { return "accepted an over-long ref" }
            switch frame {
            case let .send(content, ref, room, replyTo):
                if RoomID.reference(room) != room { return "accepted room \(room.debugDescription)" }
                if case let .e2ee(json) = content {
                    if json.utf8.count > ChatLimits.maxE2EEBytes { return "accepted e2ee over the limit" }
                    return nil
                }
                guard case let .text(text) = content else { return nil }
                if text.isEmpty { return "accepted an empty text" }
                if text.unicodeScalars.count > ChatLimits.maxTextScalars { return "accepted text over the limit" }
                if ClientFrame.trimUnicodeWhitespace(text) != text { return "text not trimmed" }
                // What we accepted, encoded as the web client would, decodes to the same frame.
                var json = "{\"type\":\"send\",\"text\":"
                JSONText.appendString(text, to: &json)
                json += ",\"room\":" + JSONText.string(room)
                if let replyTo { json += ",\"reply_to\":\"\(replyTo)\"" }
                if let ref {
                    json += ",\"ref\":"
                    JSONText.appendString(ref, to: &json)
                }
                json += "}"
                guard case let .success(again) = ClientFrame.decode(Array(json.utf8)), again == frame else {
                    return "send frame does not round-trip"
                }
                return nil
            case let .sync(since, room):
                if RoomID.reference(room) != room { return "accepted room \(room.debugDescription)" }
                if MessageID(since.description) != since { return "since does not round-trip" }
                return nil
            case let .createRoom(name, _, title, topic, _, _):
                if !RoomID.isValidName(name) { return "accepted room name \(name.debugDescription)" }
                if (title?.unicodeScalars.count ?? 0) > ChatLimits.maxTitleScalars { return "accepted a long title" }
                if (topic?.unicodeScalars.count ?? 0) > ChatLimits.maxTopicScalars { return "accepted a long topic" }
                return nil
            case let .react(_, _, emoji, _, _):
                if !(1...ChatLimits.maxEmojiScalars).contains(emoji.unicodeScalars.count) { return "accepted emoji \(emoji.debugDescription)" }
                return nil
            case let .history(_, _, limit, _):
                if !(1...ChatLimits.historyMax).contains(limit) { return "accepted history limit \(limit)" }
                return nil
            case let .invite(_, user, _), let .remove(_, user, _), let .openDM(user, _):
                if !RoomID.isValidUser(user) { return "accepted user \(user.debugDescription)" }
                return nil
            default:
                return nil
            }
        }
    }

    static func messageID(_ text: String) -> String? {
        guard let id = MessageID(text) else { return nil }
        if MessageID(id.description) != id { return "id \(text.debugDescription) does not round-trip" }
        if id.description.utf8.count > 41 { return "id longer than a stream id" }
        return nil
    }

    static func relayPayload(_ payload: String) -> String? {
        guard let relay = RoomRelay(payload: payload, room: ChatLimits.lobby) else { return nil }
        guard RoomRelay(payload: relay.payload, room: ChatLimits.lobby) == relay else { return "relay payload does not round-trip" }
        if case let .history(message) = relay {
            if message.from.contains("\n") { return "sender name holds a newline" }
            // A body the worker wrote is a JSON fragment; the frame is then one JSON object.
            if let object = try? JSONSerialization.jsonObject(with: Data(message.json.utf8)) as? [String: Any],
               object["from"] as? String != message.from { return "message frame does not carry its sender" }
        }
        return nil
    }

    static func coordinatorFrame(_ bytes: [UInt8]) -> String? {
        guard let frame = try? CoordinatorCodec.decode(ByteBuffer(bytes: bytes)) else { return nil }
        guard var encoded = try? CoordinatorCodec.encode(frame, allocator: ByteBufferAllocator()) else {
            return "decoded frame does not encode"
        }
        encoded.moveReaderIndex(forwardBy: 4)
        guard let again = try? CoordinatorCodec.decode(encoded), again == frame else { return "coordinator frame does not round-trip" }
        return nil
    }

    /// A gateway–worker link stream: every frame the decoder accepts is bounded (the handshake
    /// limit before `proof`/`challenge`) and re-encodes to exactly the bytes it came from, so
    /// the codec has one encoding per frame and no field is lost or invented.
    static func linkFrames(_ bytes: [UInt8]) -> String? {
        var decoder = LinkFrameDecoder()
        var buffer = ByteBuffer(bytes: bytes)
        var handshaking = true
        while true {
            let start = buffer.readerIndex
            let frame: LinkFrame
            do {
                guard let f = try decoder.next(&buffer) else { return nil }
                frame = f
            } catch {
                return nil
            }
            let consumed = Array(bytes[start..<buffer.readerIndex])
            if handshaking && consumed.count - 4 > LinkCodec.maxHandshakeBytes { return "frame over the handshake limit passed" }
            if case .proof = frame { handshaking = false }
            if case .challenge = frame { handshaking = false }
            let again = LinkCodec.encode(frame)
            if Array(again.readableBytesView) != consumed { return "link frame \(frame) does not re-encode to its bytes" }
        }
    }

    /// The input is split in two reads at a point it chooses; frames must come out whole,
    /// bounded, and in order, or the decoder must refuse with FrameTooLarge.
    static func lengthPrefixed(_ bytes: [UInt8]) -> String? {
        let limit = 64
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(LengthPrefixedDecoder(maxFrameLength: limit)))
        defer { _ = try? channel.finish() }
        let split = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
        var frames: [[UInt8]] = []
        do {
            for part in [bytes[..<split], bytes[split...]] {
                try channel.writeInbound(ByteBuffer(bytes: part))
                while let frame = try channel.readInbound(as: ByteBuffer.self) { frames.append(Array(frame.readableBytesView)) }
            }
        } catch is LengthPrefixedDecoder.FrameTooLarge {
            return nil
        } catch {
            return "unexpected error \(error)"
        }
        // Re-deriving the frames from the bytes must give exactly what the decoder produced.
        var expected: [[UInt8]] = []
        var i = 0
        while i + 4 <= bytes.count {
            let length = bytes[i..<i + 4].reduce(0) { $0 << 8 | Int($1) }
            if length > limit { return "frame over the limit passed" }
            guard i + 4 + length <= bytes.count else { break }
            expected.append(Array(bytes[i + 4..<i + 4 + length]))
            i += 4 + length
        }
        return frames == expected ? nil : "frames differ from the length prefixes"
    }
}
