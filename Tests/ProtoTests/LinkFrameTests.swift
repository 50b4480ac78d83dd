import NIOCore
import NIOEmbedded
import NIOTestUtils
import Proto
import Testing

@Suite struct LinkFrameTests {
    static let handshake: [LinkFrame] = [
        .hello(version: 1, gateway: "gw-1", nonce: Array(repeating: 7, count: 16)),
        .challenge(version: 1, worker: "worker-1", nonce: Array(0..<16), proof: Array(repeating: 9, count: 32)),
        .proof(Array(repeating: 1, count: 32)),
    ]

    static let frames: [LinkFrame] = handshake + [
        .open(stream: 1, user: "alice", sessionHash: String(repeating: "ab", count: 32), address: "::1", resumeAfter: nil),
        .open(stream: .max, user: "bøb", sessionHash: "h", address: "10.0.0.1", resumeAfter: "1732545000123-4"),
        .clientText(stream: 2, payload: ByteBuffer(string: "{\"type\":\"send\",\"text\":\"hi\"}")),
        .clientText(stream: 2, payload: ByteBuffer()),
        .clientClosed(stream: 3),
        .send(stream: 4, payload: ByteBuffer(string: "{\"type\":\"ack\"}")),
        .deliver(payload: ByteBuffer(string: "{\"type\":\"message\"}"), streams: [1, 2, 3, 70_000]),
        .deliver(payload: ByteBuffer(string: "x"), streams: []),
        .close(stream: 5, code: 4008),
        .flow(stream: 6, read: false),
        .flow(stream: 6, read: true),
        .ping(42), .pong(.max), .draining, .room(stream: 9), .askRoom(stream: .max),
    ]

    @Test func everyFrameRoundTrips() throws {
        for f in Self.frames {
            var buffer = LinkCodec.encode(f)
            let length = buffer.readInteger(as: UInt32.self)!
            #expect(Int(length) == buffer.readableBytes)
            #expect(try LinkCodec.decode(body: buffer) == f)
        }
    }

    @Test func decoderSplitsAnyChunkingOfAStream() throws {
        var all = ByteBuffer()
        for f in Self.frames { LinkCodec.encode(f, into: &all) }
        let pairs = [(all, Self.frames)]
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) { LinkFrameDecoder() }
    }

    @Test func truncatedAndTrailingBodiesAreRefused() throws {
        for f in Self.frames {
            var buffer = LinkCodec.encode(f)
            buffer.moveReaderIndex(forwardBy: 4)
            if buffer.readableBytes > 1 {
                let short = buffer.getSlice(at: buffer.readerIndex, length: buffer.readableBytes - 1)!
                #expect(throws: LinkCodecError.self) { try LinkCodec.decode(body: short) }
            }
            var long = buffer
            long.writeInteger(UInt8(0))
            #expect(throws: LinkCodecError.trailingBytes) { try LinkCodec.decode(body: long) }
        }
        #expect(throws: LinkCodecError.unknownKind(99)) { try LinkCodec.decode(body: ByteBuffer(bytes: [99])) }
        #expect(throws: LinkCodecError.truncated) { try LinkCodec.decode(body: ByteBuffer()) }
        // A stream list that claims more than the frame holds.
        var lying = ByteBuffer(bytes: [21, 0, 0, 0, 0])
        lying.writeInteger(UInt32(1000))
        #expect(throws: LinkCodecError.truncated) { try LinkCodec.decode(body: lying) }
        #expect(throws: LinkCodecError.badField) { try LinkCodec.decode(body: ByteBuffer(bytes: [23, 0, 0, 0, 1, 2])) }
        #expect(throws: LinkCodecError.badString) { try LinkCodec.decode(body: ByteBuffer(bytes: [3 - 2, 0, 1, 0, 1, 0xFF, 0])) }
    }

    @Test func strangerGetsOnlyASmallFrameBeforeTheHandshake() throws {
        var decoder = LinkFrameDecoder()
        var big = ByteBuffer()
        big.writeInteger(UInt32(LinkCodec.maxHandshakeBytes + 1))
        #expect(throws: LinkCodecError.tooLarge) { try decoder.next(&big) }
        // After the handshake's last frame, the full size is allowed.
        var d2 = LinkFrameDecoder()
        var proof = LinkCodec.encode(.proof(Array(repeating: 0, count: 32)))
        #expect(try d2.next(&proof) == .proof(Array(repeating: 0, count: 32)))
        let payload = ByteBuffer(repeating: 0x61, count: 100_000)
        var text = LinkCodec.encode(.clientText(stream: 1, payload: payload))
        #expect(try d2.next(&text) == .clientText(stream: 1, payload: payload))
        var huge = ByteBuffer()
        huge.writeInteger(UInt32(LinkCodec.maxFrameBytes + 1))
        #expect(throws: LinkCodecError.tooLarge) { try d2.next(&huge) }
    }

    @Test func payloadsAreSlicesNotCopies() throws {
        let f = LinkFrame.deliver(payload: ByteBuffer(string: "hello"), streams: [1])
        var buffer = LinkCodec.encode(f)
        buffer.moveReaderIndex(forwardBy: 4)
        guard case let .deliver(payload, _) = try LinkCodec.decode(body: buffer) else { Issue.record("not a deliver"); return }
        #expect(payload.storageCapacity == buffer.storageCapacity)
    }
}
