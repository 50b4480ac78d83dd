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
        case let .success(.send(text, ref, room)):
            if text.isEmpty { return "accepted an empty text" }
            if text.unicodeScalars.count > ChatLimits.maxTextScalars { return "accepted text over the limit" }
            if ClientFrame.trimUnicodeWhitespace(text) != text { return "text not trimmed" }
            if let ref, ref.utf8.count > ChatLimits.maxRefBytes { return "accepted an over-long ref" }
            if room != ChatLimits.lobby { return "accepted room \(room.debugDescription)" }
            // What we accepted, encoded as the web client would, decodes to the same frame.
            var json = "{\"type\":\"send\",\"text\":"
            JSONText.appendString(text, to: &json)
            if let ref {
                json += ",\"ref\":"
                JSONText.appendString(ref, to: &json)
            }
            json += "}"
            guard case let .success(again) = ClientFrame.decode(Array(json.utf8)),
                  again == .send(text: text, ref: ref, room: room) else { return "send frame does not round-trip" }
            return nil
        case let .success(.sync(since, room)):
            if room != ChatLimits.lobby { return "accepted room \(room.debugDescription)" }
            if MessageID(since.description) != since { return "since does not round-trip" }
            return nil
        }
    }

    static func messageID(_ text: String) -> String? {
        guard let id = MessageID(text) else { return nil }
        if MessageID(id.description) != id { return "id \(text.debugDescription) does not round-trip" }
        if id.description.utf8.count > 41 { return "id longer than a stream id" }
        return nil
    }

    static func relayPayload(_ payload: String) -> String? {
        guard let message = ChatMessage(relayPayload: payload, room: ChatLimits.lobby) else { return nil }
        if message.from.contains("\n") { return "sender name holds a newline" }
        guard let again = ChatMessage(relayPayload: message.relayPayload, room: ChatLimits.lobby), again == message else {
            return "relay payload does not round-trip"
        }
        // The frame sent to clients is one valid JSON object whatever the text holds.
        guard let object = try? JSONSerialization.jsonObject(with: Data(message.json.utf8)) as? [String: Any],
              object["text"] as? String == message.text, object["from"] as? String == message.from else {
            return "message frame is not the JSON it claims"
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
