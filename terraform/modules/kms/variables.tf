variable "name" {
  description = "Name of the Veza installation; used in resource names."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
