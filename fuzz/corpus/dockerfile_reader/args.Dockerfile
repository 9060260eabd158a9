ARG ENVIRONMENT=dev
FROM alpine AS build
ARG ENVIRONMENT
ARG OWNER=1000
ENV DEST=/root
RUN --mount=type=secret,id=token_${ENVIRONMENT},uid=${OWNER},gid=50 true
RUN --mount=type=secret,id=npm_token,target=$DEST/.npmrc,uid=$OWNER true
ARG UNSET
RUN --mount=type=secret,id=tok_$UNSET,uid=1000 true
