"""The textbook's UDPServer.py, line for line (bound to 127.0.0.1, any free port).

    python3 py_textbook_udp.py [PORT]
"""
import sys
from socket import AF_INET, SOCK_DGRAM, socket

serverPort = int(sys.argv[1]) if len(sys.argv) > 1 else 0
serverSocket = socket(AF_INET, SOCK_DGRAM)
serverSocket.bind(("127.0.0.1", serverPort))
print(f"The server is ready to receive on 127.0.0.1:{serverSocket.getsockname()[1]}", flush=True)
while True:
    message, clientAddress = serverSocket.recvfrom(2048)
    modifiedMessage = message.decode("utf-8", "replace").upper()
    serverSocket.sendto(modifiedMessage.encode(), clientAddress)
