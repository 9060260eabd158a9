# syntax=docker/dockerfile:1.7
FROM alpine
RUN --mount=type=secret,id=pypi_token,mode=rw true
RUN --mount=type=secret true
RUN --mount=type=secret,id=pypi_token,colour=red true
RUN --mount=type=secret,id=pypi_token,required,uid=1000 true
