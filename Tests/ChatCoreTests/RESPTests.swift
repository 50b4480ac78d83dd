import ChatCore
import NIOCore
import NIOEmbedded
import Testing

@Suite struct RESPTests {
    @Test func decodesEveryReplyKindAcrossSplitReads() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(RESPDecoder()))
        let wire = "+OK\r\n-ERR bad\r\n:42\r\n$4\r\nhé\n\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:7\r\n"
        // Feed one byte at a time: replies span reads.
        for byte in Array(wire.utf8) {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
        }
        var replies: [RESPValue] = []
        while let v = try channel.readInbound(as: RESPValue.self) { replies.append(v) }
        #expect(replies == [.simple("OK"), .error("ERR bad"), .integer(42), .bulk("hé\n"), .null,
                            .array([.bulk("a"), .array([.integer(7)])])])
        _ = try channel.finish()
    }

    @Test func rejectsGarbage() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(RESPDecoder()))
        #expect(throws: (any Error).self) { try channel.writeInbound(ByteBuffer(string: "?what\r\n")) }
        _ = try? channel.finish()
    }

    @Test func encodesBinarySafeCommands() throws {
        var out = ByteBuffer()
        try RESPEncoder.format(["SET", "k", "a\r\nb", ""], into: &out)
        #expect(out.readString(length: out.readableBytes) == "*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n$0\r\n\r\n")
    }
}
