FROM alpine
RUN --mount=type=ssh,id=github,required=true git clone git@github.com:o/r.git
RUN --mount=type=ssh,id=github,required,mode=0666 true
RUN --mount=type=ssh,id=github true
RUN --mount=type=ssh ssh-add -l
