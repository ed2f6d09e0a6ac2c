"""The textbook's TCPServer.py, with one thread per connection.

    python3 py_textbook_tcp.py [PORT]

The textbook's server serves one client at a time and reads one recv(1024);
this is the same blocking code with the usual next step from the chapter: a
thread per connection, looping until the client half-closes, so it can serve
the benchmark's persistent and concurrent connections. An incremental decoder
keeps a UTF-8 character split across two recv() calls whole.
"""
import codecs
import sys
import threading
from socket import AF_INET, SOCK_STREAM, socket

threading.stack_size(256 * 1024)  # 10,000 idle clients means 10,000 threads


def serve(connectionSocket):
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        while True:
            data = connectionSocket.recv(16384)
            if not data:  # the client half-closed: it has sent everything
                break
            capitalizedSentence = decoder.decode(data).upper()
            connectionSocket.sendall(capitalizedSentence.encode())
        connectionSocket.sendall(decoder.decode(b"", final=True).upper().encode())
    except OSError:
        pass
    finally:
        connectionSocket.close()


serverPort = int(sys.argv[1]) if len(sys.argv) > 1 else 0
serverSocket = socket(AF_INET, SOCK_STREAM)
serverSocket.bind(("127.0.0.1", serverPort))
serverSocket.listen(4096)  # the textbook's listen(1) would refuse a lab full of clients
print(f"The server is ready to receive on 127.0.0.1:{serverSocket.getsockname()[1]}", flush=True)
while True:
    connectionSocket, addr = serverSocket.accept()
    threading.Thread(target=serve, args=(connectionSocket,), daemon=True).start()
