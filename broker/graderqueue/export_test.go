package graderqueue

// MultipartBody is multipartBody for the tests of package graderqueue_test.
var MultipartBody = multipartBody
